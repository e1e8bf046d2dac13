"""The checksum pass of `soc compare` on a loaded order-5 database (12,288 leaves per table), side by side.

    .venv/bin/python bench/bench_compare.py [--rows 1000000] [--strips 8] [--repeat 3]

A LocalServer in a temporary directory (fsync off, max_locks_per_transaction 2048), `soc db init` at HEALPix
order 5, then ROWS synthetic transits in STRIPS chunk-like strips of sky (bench_load.strip_transits, each
strip another great circle, so the rows fill some hundreds of leaves and most leaves stay empty, as after
the first days of a mission) and their sources. Per table, the best of REPEAT runs of:

- per leaf, what `soc compare` does: the leaves' file sizes first (pg_relation_size), then only the
  non-empty leaves, grouped by leaf (tableoid), about 64 leaves a statement;
- per leaf, what it did before: one statement per group partition of 64 leaves (`transits_g000`), grouped
  by leaf, every leaf read, empty or not;
- per leaf, one aggregate per leaf, 64 of them a statement (UNION ALL of subqueries);
- per leaf, one statement (in its own snapshot transaction) per leaf: 12,288 round trips;
- one statement over the partitioned parent (a whole-table checksum: plans and locks every leaf at once,
  and says nothing about where a difference is).

The ways are interleaved round by round, and every way must give the same digest.

Then `compare()` end to end against a copy (CREATE DATABASE ... TEMPLATE): identical, and with one
changed transit (row diff of one leaf).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load import BENCH_SETTINGS, strip_transits

from pipeline.compare.engine import LEAF_BATCH, Side, compare, digest_table
from pipeline.compare.rules import read_catalog, table_spec
from pipeline.db import migrate
from pipeline.db.checksums import Digest, digest_query, leaf_digests_query, partition_units, row_hash
from pipeline.db.load import load_transits, upsert_sources
from pipeline.db.server import THROWAWAY_SETTINGS, LocalServer

ORDER = 5


def load(dsn: str, rows: int, strips: int) -> None:
    """ROWS transits in STRIPS chunks, each strip moved to another base (order-0) pixel, and their sources."""
    per = rows // strips
    with psycopg.connect(dsn) as conn:
        for i in range(strips):
            tr = strip_transits(per, seed=100 + i)
            sid = tr["source_id"]  # the order-0 pixel is in bits 59 and up
            base = ((sid >> 59) + i) % 12
            tr["source_id"] = (base << 59) | (sid & ((1 << 59) - 1))
            load_transits(conn, tr, chunk_id=1000 + i, revision=1)
            src, first = np.unique(tr["source_id"], return_index=True)
            cat = {k: tr[k][first] for k in ("ra", "dec")}
            cat.update(source_id=src, g_ref=tr["g_mag"][first], origin=np.full(len(src), "catalogue", object))
            upsert_sources(conn, cat)
        conn.commit()


def per_leaf(side: Side, spec, batch: int) -> dict[str, Digest]:
    """One aggregate per leaf, `batch` of them a statement (UNION ALL): the alternative to GROUP BY leaf."""
    out = {}
    leaves = spec.leaves
    for i in range(0, len(leaves), batch):
        chunk = leaves[i : i + batch]
        q = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {} AS i, count(*), sum({}) FROM {} r").format(
                sql.Literal(j), row_hash("r"), spec.select(leaf)
            )
            for j, leaf in enumerate(chunk)
        )
        with side.reading() as conn:
            out.update({chunk[j]: Digest.of(n, total) for j, n, total in conn.execute(q).fetchall()})
    return out


def every_leaf(side: Side, spec) -> dict[str, Digest]:
    """What soc compare did before it read the leaves' file sizes: GROUP BY leaf over every group partition,
    empty leaves included."""
    out = dict.fromkeys(spec.leaves, Digest())
    units = [u for u, _ in spec.units]
    per = max(1, LEAF_BATCH // max(1, len(spec.units[0][1])))
    for i in range(0, len(units), per):
        with side.reading() as conn:
            q = leaf_digests_query([spec.leaf_rows(u) for u in units[i : i + per]])
            out.update({leaf: Digest.of(n, total) for leaf, n, total in conn.execute(q).fetchall()})
    return out


def whole(side: Side, spec) -> Digest:
    with side.reading() as conn:
        n, total = conn.execute(digest_query(spec.select())).fetchone()
    return Digest.of(n, total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--strips", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="soc-bench-compare-") as tmp:
        server = LocalServer(Path(tmp), settings={**THROWAWAY_SETTINGS, **BENCH_SETTINGS}).start()
        try:
            run(server, args)
        finally:
            server.stop()


def run(server: LocalServer, args) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE ops")
    ops = server.dsn("ops")
    t = time.perf_counter()
    migrate.init(ops, {"chunk_seconds": 1800, "healpix_order": ORDER})
    print(f"soc db init at order {ORDER}: {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    load(ops, args.rows, args.strips)
    with psycopg.connect(ops, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        pixels, n = conn.execute(
            "SELECT count(DISTINCT p), (SELECT sum(n_transits) FROM transit_chunks)"
            " FROM (SELECT unnest(pixels) p FROM transit_chunks) x"
        ).fetchone()
    print(f"loaded in {time.perf_counter() - t:.1f} s: {n:,} transits and their sources in {pixels:,} pixels")

    side = Side("ops", ops)
    try:
        with side.reading() as conn:
            cat = read_catalog(conn)
            specs = {t: table_spec(cat, t) for t in ("transits", "sources")}
            for t, spec in specs.items():
                spec.units = tuple((u, tuple(leaves)) for u, leaves in partition_units(conn, t))
        ways = {
            "per leaf: non-empty leaves only, GROUP BY leaf (soc compare)": lambda s: digest_table(side, s),
            f"per leaf: GROUP BY leaf over every group of {LEAF_BATCH} leaves": lambda s: every_leaf(side, s),
            f"per leaf: {LEAF_BATCH} aggregates a statement (UNION ALL)": lambda s: per_leaf(
                side, s, LEAF_BATCH
            ),
            "per leaf: one statement (transaction) each": lambda s: per_leaf(side, s, 1),
            "whole table: one statement over the parent": lambda s: whole(side, s),
        }
        figures: dict[str, dict[str, float]] = {}
        for t, spec in specs.items():
            digests = []
            for _ in range(args.repeat):  # the ways interleaved, each round in the same order
                for way, fn in ways.items():
                    tt = time.perf_counter()
                    d = fn(spec)
                    dt = time.perf_counter() - tt
                    figures.setdefault(way, {})[t] = min(dt, figures.get(way, {}).get(t, dt))
                    digests.append(d if isinstance(d, Digest) else sum(d.values(), Digest()))
            assert len(set(digests)) == 1, "every way must give the same digest"
        print(f"\n{f'checksum pass, best of {args.repeat} (s)':<56} transits   sources")
        base = figures[next(iter(ways))]
        for way, f in figures.items():
            ratio = f"   {f['transits'] / base['transits']:5.2f}x  {f['sources'] / base['sources']:5.2f}x"
            print(f"{way:<56} {f['transits']:8.2f} {f['sources']:9.2f}" + ratio)
    finally:
        side.close()

    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        t = time.perf_counter()
        conn.execute("CREATE DATABASE val TEMPLATE ops")
        print(f"\ncopy for validation (CREATE DATABASE ... TEMPLATE): {time.perf_counter() - t:.1f} s")
    val = server.dsn("val")
    r = compare(ops, val)
    assert r.identical
    print(f"compare(), identical: {r.seconds['total']:.1f} s (" + ", ".join(
        f"{k} {v:.1f} s" for k, v in r.seconds.items() if k != "total") + ")")  # fmt: skip
    with psycopg.connect(val, autocommit=True) as conn:
        (pixel,) = conn.execute(
            "SELECT min(p) FROM (SELECT unnest(pixels) p FROM transit_chunks) x"
        ).fetchone()
        conn.execute(  # the pixel as a value, so that the planner prunes to its leaf
            "UPDATE transits SET g_mag = g_mag + 0.1 WHERE healpix = %s AND (source_id, obt) ="
            " (SELECT source_id, obt FROM transits WHERE healpix = %s ORDER BY 1, 2 LIMIT 1)",
            (pixel, pixel),
        )
    r = compare(ops, val)
    t = r.table("transits")
    assert t.changed == 1 and len(t.segments_diffed) == 1
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items() if k != "total")
    print(
        f"compare(), one transit changed: {r.seconds['total']:.1f} s ({phases}); rows of {t.segments_diffed}"
    )


if __name__ == "__main__":
    main()
