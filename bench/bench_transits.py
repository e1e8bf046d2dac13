"""Benchmark of the transit finder (prints figures, asserts nothing).

    .venv/bin/python bench/bench_transits.py [--plot out/transit_map.png] [--scales 0.001 0.01]

- find_transits and transits_in_interval over one day (24 one-hour blocks) at each scale, on one core;
- a brute-force finder (attitude every 0.5 s, sign change of eta for every candidate source) on the same
  sources over a shorter interval, and the speed ratio;
- the data-volume ratio of a day scanning along the Galactic plane to the sky average (density model, and
  simulated days of a year of the scanning law);
- optionally a sky map of the transit counts over one simulated year (level-4 HEALPix pixel centres).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # one core

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from pipeline.instrument import FOV_AC_WIDTH_DEG, ONBOARD_LOSS_FRACTION  # noqa: E402
from pipeline.mission_time import DAY_S, iso  # noqa: E402
from pipeline.simulate.scanlaw import FOV_AZIMUTH_RAD, JULIAN_YEAR_S, ScanLaw, wrap_pi  # noqa: E402
from pipeline.simulate.sky import (  # noqa: E402
    Sky,
    galactic_plane_ratio,
    great_circle_density,
    surface_density_icrs,
)
from pipeline.simulate.transits import find_transits, swept_pixels, transits_in_interval  # noqa: E402

HOUR = 3600.0


def _xyz(src: np.ndarray) -> np.ndarray:
    return np.stack([src["x"], src["y"], src["z"]], axis=1)


def brute_force(law: ScanLaw, xyz: np.ndarray, t0: float, t1: float, step: float = 0.5) -> int:
    """Count crossings by stepping the attitude: candidates within the FoV band, sign change of eta."""
    _, _, zc = law.frame(np.array([0.5 * (t0 + t1)]))
    cand = xyz[np.abs(xyz @ zc[0]) < np.sin(np.deg2rad(FOV_AC_WIDTH_DEG / 2 + 0.05))]
    tt = np.arange(t0, t1 + step / 2, step)
    n = 0
    chunk = max(2, 2_000_000 // max(len(cand), 1))
    for c0 in range(0, len(tt) - 1, chunk - 1):
        ts = tt[c0 : c0 + chunk]
        x, y, z = law.frame(ts)
        phi = np.arctan2(cand @ y.T, cand @ x.T)
        zeta = np.abs(cand @ z.T) < np.sin(np.deg2rad(FOV_AC_WIDTH_DEG / 2))
        for fov in (0, 1):
            e = wrap_pi(FOV_AZIMUTH_RAD[fov] - phi)
            n += int(((e[:, :-1] < 0) & (e[:, 1:] >= 0) & (np.abs(e[:, :-1]) < 0.1) & zeta[:, 1:]).sum())
    return n


def bench_scale(scale: float, law: ScanLaw, t0: float, brute_s: float) -> None:
    print(f"\n== scale {scale} (day starting {iso(t0)[:16]}) ==")
    sky = Sky(seed=1, scale=scale)
    t = time.perf_counter()
    n = n_ccd = 0
    for h in range(24):
        tr, _ = transits_in_interval(sky, law, t0 + h * HOUR, t0 + (h + 1) * HOUR)
        n += len(tr)
        n_ccd += int(tr["on_ccd"].sum())
    dt_interval = time.perf_counter() - t
    print(
        f"transits_in_interval, 24 x 1 h (sky generation included): {n:,} transits "
        f"({n_ccd * (1 - ONBOARD_LOSS_FRACTION):,.0f} on CCD after on-board loss) in {dt_interval:.2f} s"
        f" = {n / dt_interval:,.0f} transits/s"
    )
    src = sky.sources(swept_pixels(law, t0, t0 + DAY_S))
    xyz = _xyz(src)
    t = time.perf_counter()
    tr = find_transits(law, xyz, t0, t0 + DAY_S)
    dt_find = time.perf_counter() - t
    print(
        f"find_transits, one day on the {len(xyz):,} sources of the day's pixels: {len(tr):,} transits in "
        f"{dt_find:.2f} s = {len(tr) / dt_find:,.0f} transits/s"
    )
    # brute force on the sources of the first hour's pixels, over a shorter interval
    xyz1 = _xyz(sky.sources(swept_pixels(law, t0, t0 + HOUR)))
    t = time.perf_counter()
    nb = brute_force(law, xyz1, t0, t0 + brute_s)
    dt_brute = time.perf_counter() - t
    t = time.perf_counter()
    nf = len(find_transits(law, xyz1, t0, t0 + brute_s))
    dt_f = time.perf_counter() - t
    print(
        f"same {len(xyz1):,} sources over {brute_s:.0f} s: brute force (0.5 s steps) {nb:,} transits in "
        f"{dt_brute:.2f} s = {nb / dt_brute:,.0f}/s; find_transits {nf:,} in {dt_f:.3f} s = "
        f"{nf / dt_f:,.0f}/s; speed ratio {(nf / dt_f) / (nb / dt_brute):,.0f}x"
    )


def plane_ratio(law: ScanLaw, t_start: float) -> tuple[float, float]:
    """Data-volume ratios: (plane circle / random circles, densest day / mean day over a year)."""
    r = galactic_plane_ratio()
    t = t_start + np.arange(0, 365 * DAY_S, 0.25 * HOUR)
    _, _, z = law.frame(t)
    daily = great_circle_density(z, 360).reshape(365, -1).mean(axis=1)
    print("\n== data volume along the Galactic plane ==")
    print(f"scan circle along the plane / mean over random great circles: {r:.2f}")
    i = int(np.argmax(daily))
    print(
        f"one year of the scanning law: densest day {iso(t_start + i * DAY_S)[:10]} = "
        f"{daily[i] / daily.mean():.2f} x the mean day (days > 1.5 x mean: "
        f"{(daily > 1.5 * daily.mean()).sum()})"
    )
    return r, i


def simulated_day_ratio(law: ScanLaw, t_start: float, densest: int, scale: float = 0.001) -> None:
    sky = Sky(seed=1, scale=scale)
    counts = []
    for d in (densest, *range(0, 365, 33)):
        t0 = t_start + d * DAY_S
        counts.append(
            sum(len(transits_in_interval(sky, law, t0 + h * HOUR, t0 + (h + 1) * HOUR)[0]) for h in range(24))
        )
    print(
        f"simulated at scale {scale}: densest day {counts[0]:,} transits vs {np.mean(counts[1:]):,.0f} "
        f"(mean of 12 days spread over the year): ratio {counts[0] / np.mean(counts[1:]):.2f}"
    )


def transit_map(law: ScanLaw, t_start: float, path: Path) -> None:
    import healpy as hp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nside = 16
    xyz = np.stack(hp.pix2vec(nside, np.arange(12 * nside * nside)), axis=1)
    t = time.perf_counter()
    tr = find_transits(law, xyz, t_start, t_start + JULIAN_YEAR_S)
    counts = np.bincount(tr["idx"][tr["on_ccd"]], minlength=len(xyz)) * (1 - ONBOARD_LOSS_FRACTION)
    dt = time.perf_counter() - t
    print(f"\nsky map: {len(tr):,} transits of {len(xyz)} points over a year in {dt:.1f} s")
    fig = plt.figure(figsize=(12, 4.5))
    hp.mollview(
        counts,
        fig=fig.number,
        sub=(1, 2, 1),
        coord=["C", "E"],
        unit="transits",
        title="usable transits in one year (ecliptic)",
    )
    dens = surface_density_icrs(xyz)
    hp.mollview(
        np.log10(dens),
        fig=fig.number,
        sub=(1, 2, 2),
        coord=["C", "G"],
        unit="log10 per deg²",
        title="sky model, G 10-20.7, scale 1 (Galactic)",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.001, 0.01])
    ap.add_argument("--brute-seconds", type=float, default=300.0)
    ap.add_argument("--plot", type=Path, default=None, help="save a sky map of a year of transits here")
    args = ap.parse_args()
    law = ScanLaw()
    t_start = law.t_ref + 30 * DAY_S
    for scale in args.scales:
        bench_scale(scale, law, t_start, args.brute_seconds)
    _, densest = plane_ratio(law, t_start)
    simulated_day_ratio(law, t_start, densest)
    if args.plot:
        transit_map(law, t_start, args.plot)


if __name__ == "__main__":
    main()
