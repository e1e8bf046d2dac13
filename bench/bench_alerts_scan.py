"""The nightly alerts scan: one query per HEALPix pixel against one query per source, on the same data.

    python bench/bench_alerts_scan.py [--scale 0.001] [--order 5] [--days 2] [--workers N] [--fsync]

Simulates DAYS days (not timed) with photometric events and new sources, and on a PostgreSQL 15 server of
its own ingests and reduces all but the last day and runs the alerts once (yesterday's run: that history
is scanned), then ingests and reduces the last day. The figures are tonight's scan of the last day's chunk
revisions, with the full history of every source they touch: planning (which sources of which pixels got
new transits), then the scan (history, neighbours, bad-chunk flags, evaluate) per pixel and per source,
side by side, each with the same workers, and the verdicts of both compared (they must be identical).
Prints the rates, the ratio, and the aim (the per-pixel scan at least 10x the per-source one). The
tables are analyzed before the figures (autovacuum keeps statistics in operations; the query plans of
both modes depend on them). The server runs with fsync off unless --fsync.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

from pipeline.alerts.run import pending_revisions, run_alerts
from pipeline.alerts.scan import RunContext, default_workers, new_sources_by_pixel, scan
from pipeline.alerts.thresholds import load_thresholds
from pipeline.chunks import reduce_due_parallel
from pipeline.db import migrate
from pipeline.db.server import THROWAWAY_SETTINGS, LocalServer
from pipeline.intake import ingest_file, pending_files
from pipeline.reduction import make_reducer
from pipeline.simulate.run import SimConfig, simulate

AIM_RATIO = 10.0


def _ingest_reduce(dsn: str, files: list[Path], workers: int) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for f in files:
            ingest_file(conn, f)
    return len(reduce_due_parallel(dsn, make_reducer, workers))


def _same(a, b) -> bool:
    va, vb = a.verdicts, b.verdicts
    exact = ("source_id", "detector", "t_trigger", "alert_mag", "rejected_by")
    return len(va) == len(vb) and all((getattr(va, k) == getattr(vb, k)).all() for k in exact) and all(
        np.allclose(getattr(va, k), getattr(vb, k), equal_nan=True) for k in ("significance", "historic_mag")
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.001)
    ap.add_argument("--order", type=int, default=5, help="HEALPix order of the partitions (5: 12,288)")
    ap.add_argument("--days", type=int, default=2, help="days simulated; the last one is tonight's scan")
    ap.add_argument("--start", default="2016-08-01")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, help="scan workers (default: the server's cores, as `soc`)")
    ap.add_argument("--fsync", action="store_true", help="a durable server (default: fsync off)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="soc-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        simulate(tmp / "sky", SimConfig(start=args.start, days=float(args.days), scale=args.scale,
                                        seed=args.seed, progress=False, downlink_margin=3.0,
                                        event_rate=0.02, new_source_density=300.0))  # fmt: skip
        print(
            f"simulated {args.days} days at scale {args.scale} in {time.perf_counter() - t:.1f} s (not timed)"
        )
        files = pending_files(tmp / "sky" / "passes")
        last = str(np.datetime64(args.start) + np.timedelta64(args.days - 1, "D"))
        earlier = [f for f in files if json.loads(f.with_suffix(".json").read_text())["aos_utc"] < last]
        tonight = [f for f in files if f not in earlier]
        server = LocalServer(settings={} if args.fsync else THROWAWAY_SETTINGS).start()
        try:
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            dsn = server.dsn("bench")
            t = time.perf_counter()
            migrate.init(dsn, {"healpix_order": args.order, "catalogue_seed": args.seed,
                               "catalogue_scale": args.scale, "lateness_seconds": 600})  # fmt: skip
            print(
                f"schema with {12 * 4**args.order:,} partitions per table in {time.perf_counter() - t:.1f} s"
            )
            t = time.perf_counter()
            n1 = _ingest_reduce(dsn, earlier, 2)
            before = run_alerts(dsn, workers=args.workers)
            n2 = _ingest_reduce(dsn, tonight, 2)
            print(f"history: {n1} chunk revisions, scanned by run {before.run_id}"
                  f" ({before.sources:,} sources, {before.seconds:.1f} s); tonight: {n2} chunk revisions"
                  f" ({time.perf_counter() - t:.1f} s, not timed)")  # fmt: skip
            with psycopg.connect(dsn, autocommit=True) as conn:
                t = time.perf_counter()
                conn.execute("ANALYZE transits, sources")  # what autovacuum keeps up to date in operations
                print(f"ANALYZE in {time.perf_counter() - t:.1f} s (not timed)")
            with psycopg.connect(dsn) as conn:
                t = time.perf_counter()
                pending = pending_revisions(conn, conn)
                work = new_sources_by_pixel(conn, pending)
                t_plan = time.perf_counter() - t
                workers = args.workers or default_workers(conn)
                (n_transits,) = conn.execute("SELECT count(*) FROM transits").fetchone()
            ctx = RunContext(tuple((c, r) for c, r, _ in pending), load_thresholds(), args.order)
            n_src = sum(len(v) for v in work.values())
            results = {}
            for mode in ("pixel", "source"):
                t = time.perf_counter()
                results[mode] = scan(dsn, ctx, work, workers, per_source=mode == "source")
                results[mode].seconds = time.perf_counter() - t
        finally:
            server.destroy()
    px, ps = results["pixel"], results["source"]
    print(f"\ntonight: {len(pending)} chunk revisions, {len(work):,} pixels, {n_src:,} sources with new"
          f" transits, {px.n_transits:,} history rows read ({n_transits:,} transits in the database);"
          f" planning {t_plan:.2f} s; {workers} worker(s)")  # fmt: skip
    print(f"{'scan':<12}{'queries':>10}{'seconds':>10}{'sources/s':>12}{'ms/query':>10}{'verdicts':>10}")
    for mode, r in (("per pixel", px), ("per source", ps)):
        print(f"{mode:<12}{r.n_queries:>10,}{r.seconds:>10.2f}{n_src / r.seconds:>12,.0f}"
              f"{1e3 * r.seconds / r.n_queries * workers:>10.2f}{len(r.verdicts):>10,}")  # fmt: skip
    ratio = ps.seconds / px.seconds
    print(f"per pixel / per source: {ratio:.1f}x faster"
          f" (aim >= {AIM_RATIO:.0f}x: {ratio / AIM_RATIO:.2f} of it);"
          f" identical verdicts: {'yes' if _same(px, ps) else 'NO'}")  # fmt: skip


if __name__ == "__main__":
    main()
