"""Bench: HEALPix cross-match (pipeline.reduce.crossmatch) vs scipy.spatial.cKDTree on unit vectors.

A Galactic-plane catalogue from Sky(seed, scale) (about 1 million sources), 1 million detections of
them with realistic transit errors (a few mas along scan, the 177-mas AC pixel across scan, random scan
angles), 1% of the detected sources left out of the catalogue. Both methods must give identical
principal (nearest) pairs; times and their ratio are printed side by side. No assertions.

A comparison with Q3C in PostgreSQL comes later: see q3c_placeholder().

    .venv/bin/python bench/bench_crossmatch.py [--detections 1000000] [--scale 0.1] [--radius 1.0]
"""

from __future__ import annotations

import argparse
import time

import healpy as hp
import numpy as np
from scipy.spatial import cKDTree

from pipeline.reduce.crossmatch import CatalogueIndex, crossmatch, radec_to_xyz
from pipeline.simulate.sky import NSIDE, Sky, galactic_to_icrs


def q3c_placeholder() -> None:
    """Placeholder: the Q3C (PostgreSQL q3c_join) comparison is done later, with the database stage."""
    raise NotImplementedError("Q3C comparison in PostgreSQL: to be added with the database stage")


def plane_catalogue(seed: int, scale: float, target: int) -> np.ndarray:
    """Sources of the level-5 pixels nearest the Galactic centre, along the plane, until target."""
    lon = np.r_[np.arange(0.0, 60.0, 1.0), np.arange(359.0, 300.0, -1.0)]
    lon = lon[np.argsort(np.minimum(lon, 360.0 - lon), kind="stable")]
    vec = galactic_to_icrs(lon, np.zeros_like(lon))
    pix = hp.vec2pix(NSIDE, vec[:, 0], vec[:, 1], vec[:, 2], nest=True)
    _, first = np.unique(pix, return_index=True)
    pix = pix[np.sort(first)]
    sky = Sky(seed, scale)
    parts, n = [], 0
    for p in pix:
        s = sky.sources([int(p)])
        parts.append(s)
        n += len(s)
        if n >= target:
            break
    return np.concatenate(parts)


def detections(rng: np.random.Generator, src: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """n noisy detections of random sources: AL N(0, 3 mas), AC uniform +-88 mas, random scan angle."""
    j = rng.integers(0, len(src), n)
    u = np.stack([src["x"][j], src["y"][j], src["z"][j]], axis=1)
    north = np.stack([-u[:, 2] * u[:, 0], -u[:, 2] * u[:, 1], 1.0 - u[:, 2] ** 2], axis=1)
    north /= np.linalg.norm(north, axis=1, keepdims=True)
    east = np.cross(north, u)
    pa = rng.uniform(0, 2 * np.pi, n)
    al = np.cos(pa)[:, None] * north + np.sin(pa)[:, None] * east
    ac = np.cross(u, al)
    mas = np.deg2rad(1.0 / 3.6e6)
    d_al = rng.normal(0.0, 3.0, n) * mas
    d_ac = rng.uniform(-0.5, 0.5, n) * 176.8 * mas
    v = u + d_al[:, None] * al + d_ac[:, None] * ac
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ra = np.mod(np.rad2deg(np.arctan2(v[:, 1], v[:, 0])), 360.0)
    dec = np.rad2deg(np.arcsin(v[:, 2]))
    return j, ra, dec, v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detections", type=int, default=1_000_000)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--radius", type=float, default=1.0, help="arcsec")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    t = time.perf_counter()
    src = plane_catalogue(args.seed, args.scale, args.detections)
    t_sky = time.perf_counter() - t
    absent = rng.random(len(src)) < 0.01
    cat = src[~absent]
    j, ra, dec, _ = detections(rng, src, args.detections)
    area = len(np.unique(src["pix5"])) * 3.357
    print(
        f"catalogue {len(cat):,} sources over {area:.0f} deg^2 ({len(cat) / area:,.0f} per deg^2, scale "
        f"{args.scale}, sky {t_sky:.1f} s); {len(ra):,} detections, {int(absent[j].sum()):,} of absent "
        f"sources; radius {args.radius} arcsec"
    )

    # ours
    t0 = time.perf_counter()
    index = CatalogueIndex.build(cat, args.radius)
    t1 = time.perf_counter()
    res = crossmatch(index, ra, dec, new_sources=False)
    t2 = time.perf_counter()
    res_new = crossmatch(index, ra, dec)
    t3 = time.perf_counter()

    # cKDTree on unit vectors, nearest neighbour within the chord of the radius
    chord = 2.0 * np.sin(0.5 * np.deg2rad(args.radius / 3600.0))
    t4 = time.perf_counter()
    cxyz = radec_to_xyz(cat["ra"], cat["dec"])
    tree = cKDTree(cxyz)
    t5 = time.perf_counter()
    dxyz = radec_to_xyz(ra, dec)
    d, k = tree.query(dxyz, k=1, distance_upper_bound=chord)
    kd_sid = np.where(np.isfinite(d), cat["source_id"][np.minimum(k, len(cat) - 1)], -1)
    t6 = time.perf_counter()
    balls = tree.query_ball_point(dxyz, chord, return_length=True)
    t7 = time.perf_counter()

    same = np.array_equal(kd_sid, res.source_id)
    truth = src["source_id"][j]
    in_cat = ~absent[j]
    complete = np.mean(res.source_id[in_cat] == truth[in_cat])
    matched = res.source_id >= 0
    pure = np.mean(res.source_id[matched] == truth[matched])
    print(f"principal pairs identical to cKDTree: {same} ({int((kd_sid != res.source_id).sum())} differ)")
    print(f"candidate counts identical to query_ball_point: {np.array_equal(balls, res.n_candidates)}")
    print(
        f"completeness {complete:.6f}, purity {pure:.6f}, ambiguous detections "
        f"{int((res.n_candidates > 1).sum()):,}, unmatched {len(res.unmatched):,} -> "
        f"{len(res_new.new_sources['source_id']):,} new sources"
    )
    print()
    print(f"{'step':40s} {'ours (HEALPix)':>15s} {'cKDTree':>10s} {'ours/tree':>10s}")
    rows = [
        ("build index", t1 - t0, t5 - t4),
        ("principal match (tree: query k=1)", t2 - t1, t6 - t5),
        ("build + principal match", t2 - t0, t6 - t4),
        ("all candidates (tree: query_ball_point)", t2 - t1, t7 - t6),
    ]
    for name, a, b in rows:
        print(f"{name:40s} {a:14.2f}s {b:9.2f}s {a / b:10.2f}")
    print(f"{'crossmatch incl. new-source ids (total)':40s} {t3 - t2:14.2f}s {'-':>10s}")
    print(f"detections per second (ours, build + match): {len(ra) / (t2 - t0):,.0f}")
    print("(ours returns the principal match, all candidates and counts in the one call)")


if __name__ == "__main__":
    main()
