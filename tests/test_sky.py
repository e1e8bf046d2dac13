"""The sky model: real bright stars, the synthetic Galactic population, per-pixel determinism."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest

from pipeline.simulate import sky as sk
from pipeline.simulate.sky import (
    GAIA_TOTAL_SOURCES,
    N_BRIGHT_CATALOGUE,
    N_SYNTHETIC,
    NPIX,
    SOURCE_DTYPE,
    Sky,
    galactic_plane_ratio,
    galactic_to_icrs,
    load_gaia_bright,
    pixels_along,
    surface_density,
)

PIXELS = np.array([0, 17, 2048, 5000, 6143, 9000, 12287])


def _pix5_of(l_deg, b_deg) -> int:
    v = galactic_to_icrs(l_deg, b_deg)
    return int(hp.vec2pix(sk.NSIDE, *v, nest=True))


def test_bright_catalogue_is_the_gaia_dr3_file():
    cat = load_gaia_bright()
    assert len(cat) == N_BRIGHT_CATALOGUE
    assert (cat["source_id"] < 0).sum() == 70  # Hipparcos stars, source_id = -HIP
    assert cat["g"].max() < 10.0
    assert np.all((cat["dec"] >= -90) & (cat["dec"] <= 90))
    # Sirius (HIP 32349) is in, as a Hipparcos row near RA 101.29, Dec -16.72
    sirius = cat[cat["source_id"] == -32349]
    assert len(sirius) == 1
    assert sirius["ra"][0] == pytest.approx(101.287, abs=0.01)
    assert sirius["dec"][0] == pytest.approx(-16.716, abs=0.01)


def test_sources_are_deterministic_per_pixel_and_independent_of_the_request():
    a = Sky(seed=7, scale=0.002)
    b = Sky(seed=7, scale=0.002)
    first = a.sources(PIXELS)
    again = a.sources(PIXELS)  # from the cache
    np.testing.assert_array_equal(first, again)
    other = b.sources(np.r_[PIXELS[::-1], [100, 200]])  # other order, other company, fresh cache
    for p in PIXELS:
        np.testing.assert_array_equal(first[first["pix5"] == p], other[other["pix5"] == p])
    assert first.dtype == SOURCE_DTYPE
    assert not np.array_equal(first, Sky(seed=8, scale=0.002).sources(PIXELS))


def test_counts_scale_with_scale():
    pix = np.arange(0, NPIX, 37)
    lo = Sky(seed=1, scale=0.001).sources(pix)
    hi = Sky(seed=1, scale=0.005).sources(pix)
    n_lo = (lo["origin"] == 1).sum()
    n_hi = (hi["origin"] == 1).sum()
    assert n_hi / n_lo == pytest.approx(5.0, rel=0.03)
    # real bright stars are there at every scale
    assert (lo["origin"] == 0).sum() == (hi["origin"] == 0).sum() > 0
    # counts match expectation
    expected = Sky(seed=1, scale=0.005).expected_count(pix).sum()
    assert len(hi) == pytest.approx(expected, rel=0.01)


def test_source_ids_are_unique_and_decode_to_the_level12_pixel():
    src = Sky(seed=3, scale=0.01).sources(PIXELS)
    assert len(np.unique(src["source_id"])) == len(src)
    syn = src[src["origin"] == 1]
    level12 = hp.ang2pix(2**12, syn["ra"], syn["dec"], nest=True, lonlat=True)
    np.testing.assert_array_equal(syn["source_id"] >> 35, level12)
    assert np.all(syn["source_id"] & 2**34)
    np.testing.assert_array_equal(level12 >> 14, syn["pix5"])  # level 12 -> level 5
    np.testing.assert_array_equal(hp.ang2pix(32, syn["ra"], syn["dec"], nest=True, lonlat=True), syn["pix5"])
    xyz = np.stack([syn["x"], syn["y"], syn["z"]], axis=1)
    np.testing.assert_allclose(xyz, sk.radec_to_xyz(syn["ra"], syn["dec"]), atol=1e-12)
    assert np.all((syn["g"] >= 10.0) & (syn["g"] <= 20.7))
    real = src[src["origin"] == 0]
    hip = (real["source_id"] & sk.HIPPARCOS_ID_FLAG) == sk.HIPPARCOS_ID_FLAG
    assert np.all(hip | ((real["source_id"] & 2**34) == 0))
    assert (real["source_id"] > 0).all()  # no negative ids: the Hipparcos stars got Gaia-convention ones


def test_real_gaia_ids_follow_the_same_convention():
    cat = load_gaia_bright()
    gaia = cat[cat["source_id"] > 0]
    level12 = hp.ang2pix(2**12, gaia["ra"], gaia["dec"], nest=True, lonlat=True)
    assert np.mean((gaia["source_id"] >> 35) == level12) > 0.99  # a few moved out since the id was made


def test_galactic_plane_is_denser_than_the_poles():
    plane = [_pix5_of(lon, 0.5) for lon in (30.0, 90.0, 180.0, 270.0, 330.0)]
    pole = [_pix5_of(0.0, 89.0), _pix5_of(0.0, -89.0)]
    sky = Sky(seed=2, scale=0.01)
    n_plane = len(sky.sources(plane)) / len(plane)
    n_pole = len(sky.sources(pole)) / len(pole)
    assert n_plane / n_pole > 5
    assert surface_density(0.0, 3.0) > 30 * surface_density(0.0, 90.0)


def test_all_sky_total():
    s1 = Sky(seed=0, scale=1.0).expected_count(np.arange(NPIX)).sum()
    assert s1 == pytest.approx(GAIA_TOTAL_SOURCES, rel=0.01)
    s = Sky(seed=0, scale=0.01).expected_count(np.arange(NPIX)).sum()
    assert s == pytest.approx(0.01 * N_SYNTHETIC + N_BRIGHT_CATALOGUE, rel=1e-6)
    assert s == pytest.approx(0.01 * GAIA_TOTAL_SOURCES, rel=0.03)  # the bright stars come at every scale
    # independent quadrature of the density model on a (l, b) grid
    step = 0.25
    b = np.arange(-90 + step / 2, 90, step)
    l_deg = np.arange(step / 2, 360, step)
    bb, ll = np.meshgrid(b, l_deg, indexing="ij")
    total = (surface_density(ll, bb) * np.cos(np.deg2rad(bb))).sum() * step * step
    assert total == pytest.approx(N_SYNTHETIC, rel=0.01)


def test_magnitude_distribution_slope():
    src = Sky(seed=4, scale=0.01).sources(np.arange(0, NPIX, 97))
    g = src["g"][src["origin"] == 1]
    counts, edges = np.histogram(g, bins=np.arange(14.0, 20.51, 0.5))
    slope = np.polyfit(0.5 * (edges[1:] + edges[:-1]), np.log10(counts), 1)[0]
    assert slope == pytest.approx(0.334, abs=0.02)


def test_plane_day_data_volume_is_two_to_two_and_a_half_times_the_average():
    assert 2.0 <= galactic_plane_ratio(n_random=1000) <= 2.5


def test_pixels_along_covers_the_disc():
    d = galactic_to_icrs(np.array([10.0, 200.0]), np.array([0.0, 45.0]))
    pix = pixels_along(d, 2.0)
    assert len(np.unique(pix)) == len(pix)
    # every level-8 point within the radius belongs to a returned pixel
    fine = np.arange(12 * 256 * 256)
    v = np.stack(hp.pix2vec(256, fine, nest=True), axis=1)
    near = (np.arccos(np.clip(v @ d.T, -1, 1)) < np.deg2rad(2.0)).any(axis=1)
    assert set(np.unique(fine[near] >> 6)) <= set(pix.tolist())


def test_cache_is_bounded():
    sky = Sky(seed=5, scale=0.01, cache_bytes=2_000_000)
    for p in range(0, NPIX, 200):
        sky.sources([p])
    assert sky._cached_bytes <= 2_000_000 or len(sky._cache) == 1
    assert len(sky._cache) < len(range(0, NPIX, 200))
