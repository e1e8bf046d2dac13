"""End to end: FoV transits per second from delivered packets to committed rows in the Main Database.

    python bench/bench_pipeline.py [--scale 0.01] [--order 5] [--start 2016-08-01] [--fsync]

Simulates one day (not timed), then times intake of every pass and the reduction of every chunk
(image parameters, sky positions, cross-match, binary COPY into the partitioned transits table, health)
on a PostgreSQL 15 server of its own, and prints transits/s with the time per stage, side by side with the
aim (20,000 transits/s on a 2-core machine) as a ratio. The server runs with fsync off unless --fsync.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psycopg

from pipeline.chunks import reduce_due, reduce_due_parallel
from pipeline.db import migrate
from pipeline.db.server import THROWAWAY_SETTINGS, LocalServer
from pipeline.intake import ingest_file, pending_files
from pipeline.reduction import ChunkReducer, WorkingCatalogue, make_reducer
from pipeline.simulate.run import SimConfig, simulate

AIM_TRANSITS_S = 20_000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--order", type=int, default=5, help="HEALPix order of the partitions (5: 12,288)")
    ap.add_argument("--start", default="2016-08-01")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fsync", action="store_true", help="a durable server (default: fsync off)")
    ap.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="reduction worker counts to compare"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="soc-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        simulate(tmp / "day", SimConfig(start=args.start, days=1.0, scale=args.scale, seed=args.seed,
                                        progress=False, downlink_margin=3.0))  # fmt: skip
        took = time.perf_counter() - t
        print(f"simulated a day at scale {args.scale} in {took:.1f} s (not part of the figures)")
        server = LocalServer(settings={} if args.fsync else THROWAWAY_SETTINGS).start()
        try:
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            dsn = server.dsn("bench")
            t = time.perf_counter()
            migrate.init(dsn, {"healpix_order": args.order, "catalogue_seed": args.seed,
                               "catalogue_scale": args.scale, "lateness_seconds": 600})  # fmt: skip
            took = time.perf_counter() - t
            print(f"schema with {12 * 4**args.order:,} partitions per table created in {took:.1f} s")
            files = pending_files(tmp / "day" / "passes")
            with psycopg.connect(dsn, autocommit=True) as conn:
                t = time.perf_counter()
                packets = sum(ingest_file(conn, f).ingested for f in files)
                t_ingest = time.perf_counter() - t
            runs = {}
            for w in args.workers:  # each on a copy of the ingested database
                with psycopg.connect(server.dsn(), autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE bench_w{w} TEMPLATE bench")
                dsn_w = server.dsn(f"bench_w{w}")
                t = time.perf_counter()
                if w == 1:  # in this process, to see the time per stage
                    with psycopg.connect(dsn_w, autocommit=True) as conn:
                        reducer = ChunkReducer(WorkingCatalogue.from_settings(conn))
                        done = reduce_due(conn, reducer)
                else:
                    done = reduce_due_parallel(dsn_w, make_reducer, w)
                runs[w] = (time.perf_counter() - t, len(done))
                with psycopg.connect(dsn_w) as conn:
                    n = conn.execute("SELECT count(*) FROM transits").fetchone()[0]
        finally:
            server.destroy()
    t_reduce = runs[min(runs)][0]
    total = t_ingest + t_reduce
    print(f"\n{'stage (1 worker)':<18}{'seconds':>9}{'share':>8}")
    print(f"{'intake':<18}{t_ingest:>9.1f}{t_ingest / total:>8.0%}   {packets:,} packets, {len(files)} files")
    other = t_reduce - sum(reducer.timings.values())
    for stage, s in [
        *sorted(reducer.timings.items(), key=lambda kv: -kv[1]),
        ("other (fetch, chunks)", other),
    ]:
        print(f"  {stage:<16}{s:>9.1f}{s / total:>8.0%}")
    print(f"\n{n:,} transits committed; intake {n / t_ingest:,.0f} transits/s")
    print(
        f"{'workers':>8}{'reduce s':>10}{'revisions':>10}{'end-to-end/s':>14}{'vs 1 worker':>12}{'vs aim':>8}"
    )
    for w, (t_red, revs) in sorted(runs.items()):
        rate = n / (t_ingest + t_red)
        base = n / (t_ingest + runs[min(runs)][0])
        print(
            f"{w:>8}{t_red:>10.1f}{revs:>10}{rate:>14,.0f}{rate / base:>11.2f}x{rate / AIM_TRANSITS_S:>7.2f}x"
        )
    print(f"aim: {AIM_TRANSITS_S:,.0f} transits/s from packets to committed rows on a 2-core machine")


if __name__ == "__main__":
    main()
