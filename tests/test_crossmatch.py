"""HEALPix cross-match: equivalence with a k-d tree, truth recovery in crowded fields, new-source ids."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
from scipy.spatial import cKDTree

from pipeline.reduce.crossmatch import (
    NEW_SOURCE_FLAGS,
    CatalogueIndex,
    add_new_sources,
    crossmatch,
    crossmatch_and_extend,
    group_friends_of_friends,
    index_level,
    is_new_source_id,
    new_source_ids,
    radec_to_xyz,
    xyz_to_radec,
)
from pipeline.simulate.events import new_sources as sim_new_sources
from pipeline.simulate.sky import NSIDE, Sky, galactic_to_icrs

MAS = np.deg2rad(1.0 / 3.6e6)
ARCSEC = np.deg2rad(1.0 / 3600.0)


def _chord(r_arcsec):
    return 2.0 * np.sin(0.5 * r_arcsec * ARCSEC)


def _perturb(rng, u, al_mas=3.0, ac_half_mas=88.4):
    """Transit-like errors: N(0, al) along a random scan direction, uniform +-ac_half across it."""
    north = np.stack([-u[:, 2] * u[:, 0], -u[:, 2] * u[:, 1], 1.0 - u[:, 2] ** 2], axis=1)
    north /= np.linalg.norm(north, axis=1, keepdims=True)
    east = np.cross(north, u)
    pa = rng.uniform(0.0, 2.0 * np.pi, len(u))
    al = np.cos(pa)[:, None] * north + np.sin(pa)[:, None] * east
    ac = np.cross(u, al)
    v = u + (rng.normal(0, al_mas, len(u)) * MAS)[:, None] * al
    v += (rng.uniform(-ac_half_mas, ac_half_mas, len(u)) * MAS)[:, None] * ac
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --- geometry of the index -------------------------------------------------------------------------------
def test_index_level_and_neighbours_are_distinct():
    assert index_level(1.0) == 16
    assert index_level(5.0) == 14
    with pytest.raises(ValueError):
        index_level(0.0)
    for level in (1, 3, 6):
        ns = 1 << level
        p = np.arange(12 * ns * ns)
        a = np.sort(np.concatenate([p[:, None], hp.get_all_neighbours(ns, p, nest=True).T], axis=1), axis=1)
        assert not ((a[:, 1:] == a[:, :-1]) & (a[:, 1:] >= 0)).any()


@pytest.mark.parametrize("radius", [1.0, 4.0])
def test_same_pairs_as_kdtree_everywhere(radius):
    """Random and clustered points, including the poles and the HEALPix base-pixel corners."""
    rng = np.random.default_rng(11)
    n = 40_000
    u = rng.normal(size=(n, 3))
    special = []
    for z in (1.0, 2 / 3, 0.0, -2 / 3, -1.0):
        for phi in np.deg2rad(np.arange(0, 360, 45)):
            s = np.sqrt(max(0.0, 1 - z * z))
            special.append([s * np.cos(phi), s * np.sin(phi), z])
    special = np.array(special)
    m = 20_000
    clustered = special[rng.integers(0, len(special), m)] + rng.normal(size=(m, 3)) * 20 * radius * ARCSEC
    cat_u = np.r_[u, clustered]
    cat_u /= np.linalg.norm(cat_u, axis=1, keepdims=True)
    ra, dec = xyz_to_radec(cat_u)
    cat = {"source_id": rng.permutation(len(ra)).astype(np.int64) * 3 + 1, "ra": ra, "dec": dec}
    index = CatalogueIndex.build(cat, radius)
    det = cat_u[rng.integers(0, len(cat_u), 30_000)]
    det = det + rng.normal(size=det.shape) * 0.5 * radius * ARCSEC
    det /= np.linalg.norm(det, axis=1, keepdims=True)
    dra, ddec = xyz_to_radec(det)
    res = crossmatch(index, dra, ddec, new_sources=False)
    # compare with the tree on the same (rounded-trip) unit vectors
    tree = cKDTree(radec_to_xyz(ra, dec))
    q = radec_to_xyz(dra, ddec)
    d, k = tree.query(q, distance_upper_bound=_chord(radius))
    kd = np.where(np.isfinite(d), cat["source_id"][np.minimum(k, len(ra) - 1)], -1)
    assert np.array_equal(kd, res.source_id)
    assert np.array_equal(tree.query_ball_point(q, _chord(radius), return_length=True), res.n_candidates)
    assert (res.n_candidates > 1).sum() > 100  # the clusters make ambiguous cases
    ok = res.source_id >= 0
    assert np.allclose(res.sep_arcsec[ok], 2 * np.arcsin(d[ok] / 2) / ARCSEC, atol=1e-6)
    with pytest.raises(ValueError):
        crossmatch(index, dra, ddec, radius_arcsec=2 * radius)


# --- against the simulated sky ---------------------------------------------------------------------------
def _pixels():
    """Dense Galactic-plane pixels (the Galactic centre and its neighbours) plus three high-latitude ones."""
    gc = galactic_to_icrs(0.0, 0.0)
    centre = hp.vec2pix(NSIDE, *gc, nest=True)
    plane = np.r_[centre, hp.get_all_neighbours(NSIDE, centre, nest=True)]
    high = [
        hp.vec2pix(NSIDE, *galactic_to_icrs(l_deg, b_deg), nest=True)
        for l_deg, b_deg in ((90, 60), (200, -70), (300, 85))
    ]
    return np.r_[plane, high].astype(np.int64)


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(2024)
    src = Sky(9, 0.01).sources(_pixels())
    absent = rng.random(len(src)) < 0.01
    n_obs = rng.integers(1, 4, len(src))  # 1 to 3 transits per source
    j = np.repeat(np.arange(len(src)), n_obs)
    u = np.stack([src["x"][j], src["y"][j], src["z"][j]], axis=1)
    v = _perturb(rng, u)
    ra, dec = xyz_to_radec(v)
    g = src["g"][j] + rng.normal(0.0, 0.02, len(j))
    return {"src": src, "absent": absent, "j": j, "ra": ra, "dec": dec, "g": g}


def test_completeness_purity_new_sources(field):
    src, absent, j = field["src"], field["absent"], field["j"]
    plane_density = np.bincount(src["pix5"]).max() / 3.357
    assert len(src) > 70_000 and plane_density > 2_000  # crowded: > 2,000 sources per deg^2
    cat = src[~absent]
    index = CatalogueIndex.build(cat)
    res = crossmatch(index, field["ra"], field["dec"], field["g"])
    truth = src["source_id"][j]
    present = ~absent[j]
    completeness = np.mean(res.source_id[present] == truth[present])
    matched = res.source_id >= 0
    purity = np.mean(res.source_id[matched] == truth[matched])
    assert completeness >= 0.999 and purity >= 0.999  # measured: 1.000000, 0.99997
    # detections of absent sources: unmatched, one new id per absent source
    gone = absent[j]
    assert np.mean(res.source_id[gone] < 0) >= 0.99
    un = gone & (res.source_id < 0)
    ids = res.new_source_id[un]
    assert (ids >= 0).all() and is_new_source_id(ids).all()
    per_src = {}
    for s, i in zip(j[un], ids, strict=True):
        per_src.setdefault(s, set()).add(int(i))
    assert all(len(v) == 1 for v in per_src.values())
    assert len({next(iter(v)) for v in per_src.values()}) == len(per_src)
    assert set(res.new_sources["source_id"].tolist()) == set(ids.tolist())
    assert not np.isin(res.new_sources["source_id"], src["source_id"]).any()
    # the id's level-12 pixel is that of the new source position, and the position is the truth
    ns = res.new_sources
    pix12 = hp.ang2pix(1 << 12, ns["ra"], ns["dec"], nest=True, lonlat=True)
    assert np.array_equal(ns["source_id"] >> 35, pix12)
    true_of = {next(iter(v)): s for s, v in per_src.items()}
    t = np.array([true_of[int(i)] for i in ns["source_id"]])
    sep = np.arccos(
        np.clip(
            (radec_to_xyz(ns["ra"], ns["dec"]) * np.stack([src["x"][t], src["y"][t], src["z"][t]], 1)).sum(1),
            -1,
            1,
        )
    )
    assert sep.max() / MAS < 150.0
    assert np.allclose(ns["g"], src["g"][t], atol=0.1)


def test_shuffled_input_gives_identical_result(field):
    index = CatalogueIndex.build(field["src"][~field["absent"]])
    a = crossmatch(index, field["ra"], field["dec"], field["g"])
    perm = np.random.default_rng(1).permutation(len(field["ra"]))
    b = crossmatch(index, field["ra"][perm], field["dec"][perm], field["g"][perm])
    assert np.array_equal(a.source_id[perm], b.source_id)
    assert np.array_equal(a.n_candidates[perm], b.n_candidates)
    assert np.array_equal(a.new_source_id[perm], b.new_source_id)
    for key in ("source_id", "ra", "dec", "n_detections"):
        assert np.array_equal(a.new_sources[key], b.new_sources[key])
    amb_a = np.lexsort((a.ambiguous["source_id"], a.ambiguous["detection"]))
    det_b = perm[b.ambiguous["detection"]]
    amb_b = np.lexsort((b.ambiguous["source_id"], det_b))
    assert np.array_equal(a.ambiguous["detection"][amb_a], det_b[amb_b])
    assert np.array_equal(a.ambiguous["source_id"][amb_a], b.ambiguous["source_id"][amb_b])
    assert np.array_equal(a.ambiguous["principal"][amb_a], b.ambiguous["principal"][amb_b])
    # and the catalogue order does not matter either
    cat = field["src"][~field["absent"]]
    index2 = CatalogueIndex.build(cat[np.random.default_rng(2).permutation(len(cat))])
    c = crossmatch(index2, field["ra"], field["dec"], field["g"])
    assert np.array_equal(a.source_id, c.source_id) and np.array_equal(a.new_source_id, c.new_source_id)


def test_new_sources_join_the_catalogue(field):
    src, absent, j = field["src"], field["absent"], field["j"]
    index = CatalogueIndex.build(src[~absent])
    first = np.arange(len(j)) % 2 == 0  # day 1: half the detections
    res1, index2 = crossmatch_and_extend(index, field["ra"][first], field["dec"][first], field["g"][first])
    assert len(index2) == len(index) + len(res1.new_sources["source_id"])
    res2 = crossmatch(index2, field["ra"][~first], field["dec"][~first], field["g"][~first])
    # day 2: absent sources seen on day 1 now match their new ids
    seen1 = {}
    for s, i in zip(j[first], res1.new_source_id, strict=True):
        if i >= 0:
            seen1[s] = i
    sel = np.array([s in seen1 for s in j[~first]])
    got = res2.source_id[sel]
    want = np.array([seen1[s] for s in j[~first][sel]])
    assert sel.sum() > 100 and np.mean(got == want) >= 0.999
    # new ids never collide with the ids already in the index
    assert not np.isin(res2.new_sources["source_id"], index2.source_id).any()
    assert add_new_sources(index2, crossmatch(index2, [], [])) is index2


# --- rules and ids ---------------------------------------------------------------------------------------
def _offset(ra, dec, east_arcsec, north_arcsec):
    return ra + east_arcsec / 3600.0 / np.cos(np.deg2rad(dec)), dec + north_arcsec / 3600.0


def test_magnitude_tie_break_and_ambiguous_list():
    ra0, dec0 = 150.0, 20.0
    cra, cdec = zip(*[_offset(ra0, dec0, e, 0.0) for e in (0.05, -0.08, 0.7)], strict=True)
    cat = {
        "source_id": np.array([10, 20, 30]),
        "ra": np.array(cra),
        "dec": np.array(cdec),
        "g": [15.0, 18.0, np.nan],
    }
    index = CatalogueIndex.build(cat)
    r = crossmatch(index, [ra0, ra0, ra0], [dec0, dec0, dec0], [18.02, np.nan, 15.0])
    assert r.source_id.tolist() == [20, 10, 10]  # G picks the near tie; no G or agreeing G: nearest
    assert crossmatch(index, [ra0], [dec0], [18.02], tie_arcsec=0.0).source_id.tolist() == [10]
    assert crossmatch(index, [ra0], [dec0]).source_id.tolist() == [10]
    assert r.n_candidates.tolist() == [3, 3, 3]
    amb = r.ambiguous
    assert amb["detection"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert amb["source_id"][:3].tolist() == [10, 20, 30] and amb["principal"][:3].tolist() == [
        False,
        True,
        False,
    ]
    assert np.all(np.diff(amb["sep_arcsec"][:3]) > 0)
    # a detection whose only near candidates lack G keeps the nearest
    cat2 = {
        "source_id": np.array([1, 2]),
        "ra": np.array(cra[:2]),
        "dec": np.array(cdec[:2]),
        "g": [np.nan, np.nan],
    }
    assert crossmatch(CatalogueIndex.build(cat2), [ra0], [dec0], [18.0]).source_id.tolist() == [1]


def test_invalid_and_empty_inputs():
    cat = {"source_id": np.array([5]), "ra": np.array([10.0]), "dec": np.array([-30.0])}
    index = CatalogueIndex.build(cat)
    r = crossmatch(index, [10.0, np.nan, 40.0], [-30.0, 0.0, 10.0])
    assert r.source_id.tolist() == [5, -1, -1] and r.invalid.tolist() == [1] and r.unmatched.tolist() == [2]
    assert r.new_source_id[1] == -1 and r.new_source_id[2] >= 0
    e = crossmatch(index, [], [])
    assert len(e.source_id) == 0 and len(e.new_sources["source_id"]) == 0
    empty = CatalogueIndex.build({"source_id": np.zeros(0, np.int64), "ra": np.zeros(0), "dec": np.zeros(0)})
    assert crossmatch(empty, [1.0], [2.0]).unmatched.tolist() == [0]


def test_new_source_id_scheme():
    rng = np.random.default_rng(3)
    u = rng.normal(size=(1000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    ids = new_source_ids(u)
    assert (ids > 0).all() and is_new_source_id(ids).all() and len(np.unique(ids)) == len(ids)
    assert np.array_equal(ids >> 35, hp.vec2pix(1 << 12, *u.T, nest=True))
    assert ((ids & NEW_SOURCE_FLAGS) == NEW_SOURCE_FLAGS).all()
    # two positions in one 3.1-mas cell: the counter (bits 28-30) separates them, the smaller x first
    v = np.array([u[0], u[0] + 1e-10 * np.array([1.0, 0, 0])])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    a, b = new_source_ids(v)
    assert b - a == 1 << 28 if v[0, 0] < v[1, 0] else a - b == 1 << 28
    # a clash with an existing id moves the new one on
    assert new_source_ids(u[:1], existing=ids[:1])[0] == ids[0] + (1 << 28)
    # disjoint from every other scheme: simulator catalogue and new-source ids, real Gaia DR3 ids
    sky = Sky(1, 0.001).sources(np.arange(0, 12288, 97))
    assert not is_new_source_id(sky["source_id"]).any()
    sim_new = sim_new_sources(1, 0.01, 10.0, np.arange(-3, 200))["source_id"]
    assert len(sim_new) > 1000 and not is_new_source_id(sim_new).any()
    assert not is_new_source_id(np.array([5853498713190525696, 4295806720, -12345])).any()


def test_friends_of_friends_groups_chains():
    ra0, dec0 = 45.0, 60.0
    pts = [_offset(ra0, dec0, e, 0.0) for e in (0.0, 0.8, 1.6, 5.0)]  # a chain of three, one apart
    u = radec_to_xyz(*map(np.array, zip(*pts, strict=True)))
    assert group_friends_of_friends(u, 1.0).tolist() == [0, 0, 0, 1]
    assert group_friends_of_friends(u[::-1], 1.0).tolist() == [0, 1, 1, 1]
    assert len(group_friends_of_friends(np.zeros((0, 3)), 1.0)) == 0
