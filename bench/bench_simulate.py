"""Wall time of simulated days at two scales, on one core: transits/s and telemetry bytes/s.

    python bench/bench_simulate.py [--scales 0.001 0.01] [--start 2016-08-01] [--days 1]

Prints figures side by side with the aim (a --scale 0.01 day in under two minutes), as ratios.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from pipeline.simulate.run import SimConfig, simulate

AIM_S_PER_DAY_AT_001 = 120.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.001, 0.01])
    ap.add_argument("--start", default="2016-08-01")
    ap.add_argument("--days", type=float, default=1.0)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the aim says
    rows = []
    for scale in args.scales:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            s = simulate(Path(tmp), SimConfig(start=args.start, days=args.days, scale=scale, progress=False))
            wall = time.perf_counter() - t0
        c = s["counts"]
        rows.append((scale, wall, c["transits"], c["telemetered"], s["bytes_delivered"], c["packets"]))
    print(
        f"{'scale':>7} {'wall s':>8} {'transits':>10} {'telemetered':>11} {'transits/s':>11} "
        f"{'MB/s':>7} {'MB/day':>8} {'s/day':>7} {'vs aim':>7}"
    )
    for scale, wall, n, tel, nbytes, _ in rows:
        per_day = wall / args.days
        aim = AIM_S_PER_DAY_AT_001 * scale / 0.01
        print(
            f"{scale:>7} {wall:>8.1f} {n:>10,} {tel:>11,} {n / wall:>11,.0f} {nbytes / wall / 1e6:>7.2f} "
            f"{nbytes / args.days / 1e6:>8.1f} {per_day:>7.1f} {per_day / aim:>6.2f}x"
        )
    print(
        f"aim: a --scale 0.01 day in under {AIM_S_PER_DAY_AT_001:.0f} s (ratio < 1 meets it; smaller scales"
        " are compared with the aim scaled linearly)"
    )
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
