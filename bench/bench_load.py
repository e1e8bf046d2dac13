"""Bulk loading of transits into the 12,288-partition table (HEALPix order 5): figures side by side.

    .venv/bin/python bench/bench_load.py [--rows 1000000] [--small 20000] [--fsync] [--range]

A LocalServer in a temporary directory, fsync off (THROWAWAY_SETTINGS) unless --fsync (then the whole
bench runs with fsync, synchronous_commit and full_page_writes on), max_locks_per_transaction raised to
2048 (creating the partitions in one migration holds a lock on every relation it creates). The rows are one
chunk-like strip of sky: transits of sources along a great circle, 2 degrees wide, so a chunk covers some
hundred pixels as a real 30-minute chunk does. Every figure is rows per second of a complete load
(encode, COPY, commit) into the touched partitions, emptied before each run.

Figures: our loader (numpy-built binary COPY) against the server's ceiling (psql \\copy of the same sorted
rows from a binary file, through the server's socket), the psycopg write_row path and per-row INSERT
(executemany) on a smaller sample; sorted against random partition order; 1 against 2 parallel streams;
the cost of the healpix CHECK constraint; with --range, LIST against RANGE leaf partitions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import healpy as hp
import numpy as np
import psycopg

from pipeline.db import migrate
from pipeline.db.load import (
    TRANSIT_COLUMNS,
    BinaryCopyEncoder,
    load_transits,
    load_transits_parallel,
    sort_order,
)
from pipeline.db.server import PG_BIN, THROWAWAY_SETTINGS, LocalServer

ORDER = 5
BENCH_SETTINGS = {"max_locks_per_transaction": "2048", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def strip_transits(n: int, seed: int = 1) -> dict:
    """N transits of about N/8 sources along a great circle (a chunk's scan strip), Gaia-style ids."""
    rng = np.random.default_rng(seed)
    n_src = max(n // 8, 1)
    pole = np.deg2rad([37.0, 61.0])  # (theta, phi) of the great circle's pole
    z = hp.ang2vec(*pole)
    a = np.cross(z, [0.0, 0.0, 1.0])
    a /= np.linalg.norm(a)
    b = np.cross(z, a)
    lon = rng.uniform(0, np.deg2rad(60.0), n_src)  # 60 degrees of the circle: two fields of view
    lat = rng.uniform(-np.deg2rad(1.0), np.deg2rad(1.0), n_src)
    v = (
        np.cos(lat)[:, None] * (np.cos(lon)[:, None] * a + np.sin(lon)[:, None] * b)
        + np.sin(lat)[:, None] * z
    )
    pix12 = hp.vec2pix(1 << 12, *v.T, nest=True).astype(np.int64)
    src = (pix12 << 35) | rng.integers(0, 1 << 34, n_src)
    sid = rng.choice(src, n)
    obt = 1e7 + rng.uniform(0, 1800, n)
    return {
        "source_id": sid, "obt": obt, "t": obt - 0.5,
        "apid": np.full(n, 1201, np.int16), "seq": rng.integers(0, 16384, n).astype(np.int32),
        "fov": rng.integers(0, 2, n).astype(np.int16), "ccd_row": rng.integers(0, 7, n).astype(np.int16),
        "ac_pixel": rng.integers(0, 1966, n).astype(np.int16),
        "ra": rng.uniform(0, 360, n), "dec": rng.uniform(-90, 90, n),
        "pos_err_mas": rng.uniform(0.1, 5, n).astype(np.float32),
        "g_flux": rng.uniform(10, 1e6, n).astype(np.float32), "g_flux_err": np.ones(n, np.float32),
        "g_mag": rng.uniform(6, 20, n).astype(np.float32), "g_mag_err": np.full(n, 0.01, np.float32),
        "n_good": np.full(n, 9, np.int16), "flags": rng.integers(0, 4, n).astype(np.int32),
        "match_dist_mas": rng.uniform(0, 900, n).astype(np.float32),
        "ambiguous": rng.random(n) < 0.05,
    }  # fmt: skip


def with_keys(rows: dict, chunk_id: int = 1, revision: int = 1) -> dict:
    n = len(rows["obt"])
    healpix = (rows["source_id"] >> (35 + 2 * (12 - ORDER))).astype(np.int32)
    return {**rows, "healpix": healpix, "chunk_id": np.full(n, chunk_id, np.int64),
            "revision": np.full(n, revision, np.int32)}  # fmt: skip


def take(rows: dict, idx) -> dict:
    return {k: v[idx] for k, v in rows.items()}


class Bench:
    def __init__(self, server: LocalServer, dbname: str, table: str = "transits"):
        self.server, self.dsn, self.table = server, server.dsn(dbname), table
        self.dbname = dbname

    def empty(self, pixels) -> None:
        """Empty the leaves the rows touch (TRUNCATE of the parent would lock all 12,288)."""
        with psycopg.connect(self.dsn) as conn:
            names = ", ".join(f"{self.table}_p{p:05d}" for p in pixels)
            conn.execute(f"TRUNCATE {names}")
            conn.execute("TRUNCATE transit_chunks")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def timed(self, pixels, fn) -> float:
        self.empty(pixels)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def loader(self, rows, **kw) -> None:
        with psycopg.connect(self.dsn) as conn:
            load_transits(conn, rows, 1, 1, **kw)

    def psql_copy(self, path: Path) -> None:
        cols = ", ".join(c.name for c in TRANSIT_COLUMNS)
        cmd = [str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.server.socket_dir),
               "-p", str(self.server.port), "-U", "postgres", "-d", self.dbname,
               "-c", f"\\copy {self.table} ({cols}) FROM '{path}' (FORMAT binary)"]  # fmt: skip
        subprocess.run(cmd, check=True, cwd="/")

    def inserts(self, rows) -> None:
        k = with_keys(rows)
        names = [c.name for c in TRANSIT_COLUMNS]
        cols = [k[c].tolist() for c in names]
        cols[names.index("ambiguous")] = [bool(b) for b in cols[names.index("ambiguous")]]
        q = f"INSERT INTO {self.table} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"
        with psycopg.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.executemany(q, list(zip(*cols, strict=True)))


def binary_file(rows: dict, path: Path) -> None:
    k = with_keys(rows)
    enc = BinaryCopyEncoder(TRANSIT_COLUMNS, k)
    with open(path, "wb") as f:
        for buf in enc.blocks(sort_order(k)):
            f.write(buf)
    os.chmod(path, 0o644)


def rounds(b: Bench, runs: dict, repeat: int) -> dict[str, float]:
    """rows/s of each run, the best of REPEAT rounds; the runs alternate within a round so that a busy
    spell of the (shared) machine does not fall on one of them only."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, (_, pixels, fn) in runs.items():
            best[name] = min(best[name], b.timed(pixels, fn))
    return {name: runs[name][0] / t for name, t in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000, help="rows for per-row INSERT and write_row")
    ap.add_argument("--repeat", type=int, default=2, help="runs per figure (the best is shown)")
    ap.add_argument("--fsync", action="store_true", help="fsync, synchronous_commit, full_page_writes on")
    ap.add_argument("--range", action="store_true", help="also build RANGE leaves and compare their COPY")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="soc-bench-load-"))
    os.chmod(tmp, 0o755)  # the server runs as postgres when we are root
    settings = {**BENCH_SETTINGS, **(DURABLE if args.fsync else THROWAWAY_SETTINGS)}
    server = LocalServer(tmp / "pg", settings=settings).start()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        t0 = time.perf_counter()
        migrate.init(server.dsn("bench"), {"healpix_order": ORDER})
        t_init = time.perf_counter() - t0
        b = Bench(server, "bench")
        with psycopg.connect(b.dsn) as conn:
            n_leaves = conn.execute(
                "SELECT count(*) FROM pg_partition_tree('transits') WHERE isleaf"
            ).fetchone()[0]
            n_rel, size = conn.execute(
                "SELECT count(*), pg_database_size(current_database()) / 1e6"
                " FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            ).fetchone()
        print(f"server: PostgreSQL 15, {'fsync ON (durable)' if args.fsync else 'fsync OFF (throwaway)'}, "
              f"{os.cpu_count()} cores shared by client and server")  # fmt: skip
        print(f"soc db init at order {ORDER}: {n_leaves:,} leaf partitions per table, {n_rel:,} relations "
              f"in public, {size:.0f} MB, {t_init:.1f} s")  # fmt: skip

        rows = strip_transits(args.rows)
        pixels = np.unique(rows["source_id"] >> (35 + 2 * (12 - ORDER)))
        print(f"data: {args.rows:,} transits of {len(np.unique(rows['source_id'])):,} sources in "
              f"{len(pixels)} pixels (one scan strip)\n")  # fmt: skip
        path = tmp / "transits.bin"
        binary_file(rows, path)
        n, m = args.rows, args.small
        shuffled = take(rows, np.random.default_rng(2).permutation(n))
        small = take(rows, slice(0, m))
        sp = np.unique(small["source_id"] >> (35 + 2 * (12 - ORDER)))
        runs = {  # name: (rows, pixels to empty, load)
            "psql \\copy (binary file, sorted)": (n, pixels, lambda: b.psql_copy(path)),
            "load_transits (numpy, sorted)": (n, pixels, lambda: b.loader(rows)),
            "load_transits, random order": (n, pixels, lambda: b.loader(shuffled, sort=False)),
            "parallel, 1 stream": (n, pixels, lambda: load_transits_parallel(b.dsn, rows, 1, 1, streams=1)),
            "parallel, 2 streams": (n, pixels, lambda: load_transits_parallel(b.dsn, rows, 1, 1, streams=2)),
            f"load_transits (numpy), {m:,} rows": (m, sp, lambda: b.loader(small)),
            f"load_transits (write_row), {m:,} rows": (m, sp, lambda: b.loader(small, method="write_row")),
            f"INSERT executemany, {m:,} rows": (m, sp, lambda: b.inserts(small)),
        }
        res = rounds(b, runs, args.repeat)
        # The healpix CHECK: the same loads without it (dropped for the measurement).
        with psycopg.connect(b.dsn) as conn:
            t0 = time.perf_counter()
            conn.execute("ALTER TABLE transits DROP CONSTRAINT transits_healpix_of_source")
            t_drop = time.perf_counter() - t0
        res |= rounds(b, {
            "load_transits, no healpix CHECK": (n, pixels, lambda: b.loader(rows)),
            "psql \\copy, no healpix CHECK": (n, pixels, lambda: b.psql_copy(path)),
        }, args.repeat)  # fmt: skip
        if args.range:
            res |= _range_leaves(server, rows, pixels, path, args.repeat)

        ceiling = res["psql \\copy (binary file, sorted)"]
        print(f"{'load':42s} {'rows/s':>10s} {'x psql':>7s}")
        for name, v in res.items():
            print(f"{name:42s} {v:10,.0f} {v / ceiling:7.2f}")
        print(f"\n(dropping the CHECK from {n_leaves:,} partitions took {t_drop:.1f} s)")
    finally:
        server.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def _range_leaves(server, rows, pixels, path, repeat) -> dict[str, float]:
    """The same schema with RANGE (p TO p+1) leaves, in a second database, against LIST leaves."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench_range")
    dsn = server.dsn("bench_range")
    migrate.init(dsn, {"healpix_order": 0})  # a small schema; then transits again with RANGE leaves
    with psycopg.connect(dsn) as conn:
        cols = conn.execute(
            "SELECT string_agg(format('%I %s %s', attname, format_type(atttypid, atttypmod),"
            " CASE WHEN attnotnull THEN 'NOT NULL' ELSE '' END), ', ' ORDER BY attnum)"
            " FROM pg_attribute WHERE attrelid = 'transits'::regclass AND attnum > 0"
        ).fetchone()[0]
        conn.execute("DROP TABLE transits")
        conn.execute(f"CREATE TABLE transits ({cols}, PRIMARY KEY (healpix, source_id, obt),"
                     " CONSTRAINT transits_healpix_of_source CHECK (healpix = source_id >> 49))"
                     " PARTITION BY RANGE (healpix)")  # fmt: skip
        conn.execute("CREATE INDEX transits_chunk ON transits (chunk_id)")
        conn.commit()
        t0 = time.perf_counter()
        for q in range(192):
            conn.execute(f"CREATE TABLE transits_g{q:03d} PARTITION OF transits FOR VALUES FROM ({q * 64})"
                         f" TO ({(q + 1) * 64}) PARTITION BY RANGE (healpix)")  # fmt: skip
            for p in range(q * 64, (q + 1) * 64):
                conn.execute(f"CREATE TABLE transits_p{p:05d} PARTITION OF transits_g{q:03d}"
                             f" FOR VALUES FROM ({p}) TO ({p + 1})")  # fmt: skip
            conn.commit()
        print(f"(RANGE-leaf transits table built in {time.perf_counter() - t0:.1f} s)")
    b_list, b_range = Bench(server, "bench"), Bench(server, "bench_range")
    rows = {**rows, "healpix": (rows["source_id"] >> 49).astype(np.int32)}  # bench_range says order 0
    n = len(rows["obt"])
    with psycopg.connect(b_list.dsn) as conn:  # the same constraints in both
        conn.execute("ALTER TABLE transits ADD CONSTRAINT transits_healpix_of_source"
                     " CHECK (healpix = source_id >> 49)")  # fmt: skip
    out = {}
    for _ in range(repeat):
        for name, bb, fn in (
            ("LIST leaves: load_transits", b_list, lambda: b_list.loader(rows)),
            ("RANGE leaves: load_transits", b_range, lambda: b_range.loader(rows)),
            ("LIST leaves: psql \\copy", b_list, lambda: b_list.psql_copy(path)),
            ("RANGE leaves: psql \\copy", b_range, lambda: b_range.psql_copy(path)),
        ):
            out[name] = max(out.get(name, 0.0), n / bb.timed(pixels, fn))
    return out


if __name__ == "__main__":
    main()
