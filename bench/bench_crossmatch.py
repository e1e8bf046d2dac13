"""Bench: HEALPix cross-match (pipeline.reduce.crossmatch) vs scipy cKDTree and Q3C in PostgreSQL.

A Galactic-plane catalogue from Sky(seed, scale) (about 1 million sources), 1 million detections of
them with realistic transit errors (a few mas along scan, the 177-mas AC pixel across scan, random scan
angles), 1% of the detected sources left out of the catalogue. All methods must give identical
principal (nearest) pairs; times and their ratios are printed side by side. No assertions.

Third method: Q3C (q3c_join) in a throwaway PostgreSQL 15 server (pipeline.db.server.LocalServer, settings
Q3C_SETTINGS), needs Debian's postgresql-15-q3c; without it the bench says Q3C is unavailable and runs
the other two. Catalogue (source_id, ra, dec) and detections (det_id, ra, dec) are loaded with binary
COPY (exact float8), the catalogue gets the Q3C index (q3c_ang2ipix), CLUSTER and ANALYZE, and the
nearest neighbour within the radius comes from a LATERAL subquery (q3c_join ... ORDER BY q3c_dist,
source_id LIMIT 1: exact distance ties go to the smaller id, as in ours). Timed separately: load, index,
join (results copied back to numpy), once with the detections in arrival order and once after sorting
the detection table by q3c_ang2ipix (ours sorts its detections by pixel inside the match too).

    .venv/bin/python bench/bench_crossmatch.py [--detections 1000000] [--scale 0.1] [--radius 1.0]
        [--no-q3c]
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import time
from pathlib import Path

import healpy as hp
import numpy as np
from scipy.spatial import cKDTree

from pipeline.db.server import PG_BIN, THROWAWAY_SETTINGS, LocalServer, ServerError
from pipeline.reduce.crossmatch import CatalogueIndex, crossmatch, radec_to_xyz
from pipeline.simulate.sky import NSIDE, Sky, galactic_to_icrs

# Q3C in PostgreSQL: one core like the other two (no parallel workers, no JIT; the planner keeps the LATERAL
# nested loop serial anyway), all tables (about 50 MB each for 1 million rows, the index about 20 MB) in
# shared buffers, sorts and the index build in memory; fsync off (a throwaway server).
Q3C_SETTINGS = {
    **THROWAWAY_SETTINGS,
    "shared_buffers": "1GB",
    "work_mem": "256MB",
    "maintenance_work_mem": "1GB",
    "effective_cache_size": "4GB",
    "max_parallel_workers_per_gather": "0",
    "max_parallel_maintenance_workers": "0",
    "jit": "off",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "wal_level": "minimal",  # tables created and filled in one transaction (COPY, CLUSTER, CTAS) skip WAL
    "max_wal_senders": "0",
}
_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
# Inner LATERAL join: a detection without a source within the radius gives no row (-1 once unpacked).
_Q3C_JOIN = """
COPY (
    SELECT d.det_id, m.source_id, m.dist
    FROM {det} AS d
    CROSS JOIN LATERAL (
        SELECT c.source_id, q3c_dist(d.ra, d.dec, c.ra, c.dec) AS dist
        FROM cat AS c
        WHERE q3c_join(d.ra, d.dec, c.ra, c.dec, %(radius)s)
        ORDER BY dist, c.source_id
        LIMIT 1
    ) AS m
) TO STDOUT (FORMAT binary)
"""


def pgcopy_binary(*cols: tuple[np.ndarray, str]) -> bytes:
    """PostgreSQL binary COPY data of columns given as (values, big-endian numpy type) pairs."""
    n = len(cols[0][0])
    fields = [("nf", ">i2")]
    for i, (_, t) in enumerate(cols):
        fields += [(f"l{i}", ">i4"), (f"v{i}", t)]
    rec = np.empty(n, dtype=fields)
    rec["nf"] = len(cols)
    for i, (v, t) in enumerate(cols):
        rec[f"l{i}"] = np.dtype(t).itemsize
        rec[f"v{i}"] = v
    return _PGCOPY_HEADER + rec.tobytes() + b"\xff\xff"


def parse_pgcopy_binary(buf: bytes, types: list[str]) -> np.ndarray:
    """Rows of binary COPY output whose columns are all non-null fixed-size values of these types."""
    ext = struct.unpack_from(">i", buf, 15)[0]
    fields = [("nf", ">i2")]
    for i, t in enumerate(types):
        fields += [(f"l{i}", ">i4"), (f"v{i}", t)]
    body = memoryview(buf)[19 + ext : len(buf) - 2]
    rec = np.frombuffer(body, dtype=fields)
    if len(rec) and not (
        (rec["nf"] == len(types)).all() and all((rec[f"l{i}"] >= 0).all() for i in range(len(types)))
    ):
        raise ValueError("unexpected binary COPY layout (nulls?)")
    return rec


class Q3CUnavailable(RuntimeError):
    """Q3C cannot be run here (no psycopg, no PostgreSQL 15, or no postgresql-15-q3c)."""


def _copy_in(cur, table: str, columns: str, data: bytes) -> None:
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT binary)") as cp:
        view = memoryview(data)
        for i in range(0, len(view), 1 << 23):
            cp.write(view[i : i + (1 << 23)])


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat), for the server backend's share."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _q3c_join(cur, det_table: str, n: int, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Run the LATERAL q3c_join on det_table; (source_id (n,) -1 if none, q3c_dist in arcsec (n,))."""
    buf = bytearray()
    with cur.copy(_Q3C_JOIN.format(det=det_table), {"radius": radius_arcsec / 3600.0}) as cp:
        for block in cp:
            buf += block
    rec = parse_pgcopy_binary(bytes(buf), [">i8", ">i8", ">f8"])
    sid = np.full(n, -1, np.int64)
    sep = np.full(n, np.nan)
    sid[rec["v0"]] = rec["v1"]
    sep[rec["v0"]] = rec["v2"] * 3600.0
    return sid, sep


def q3c_crossmatch(cat: np.ndarray, ra: np.ndarray, dec: np.ndarray, radius_arcsec: float) -> dict:
    """Nearest catalogue source within the radius of each detection, with Q3C in a throwaway PG15 server.

    Returns a dict with version (of q3c); the times (s) load (CREATE TABLE + binary COPY of both tables,
    one transaction), index (q3c_ang2ipix index on cat, CLUSTER, ANALYZE of both), join (the LATERAL
    q3c_join over the detections in arrival order, results copied back and unpacked), sort (CREATE TABLE
    det_sorted AS ... ORDER BY q3c_ang2ipix, ANALYZE) and join_sorted (the join over det_sorted); the
    server backend's CPU seconds join_cpu and join_sorted_cpu; mb, the sizes of cat, its index and det;
    the results source_id, sep_arcsec
    (arrival order) and source_id_sorted (the second join's, same detection order).
    Raises Q3CUnavailable when Q3C cannot be run.
    """
    try:
        import psycopg
    except ImportError as e:
        raise Q3CUnavailable(f"psycopg not importable ({e})") from e
    pg_config = PG_BIN / "pg_config"
    if not pg_config.exists():
        raise Q3CUnavailable(f"no PostgreSQL 15 in {PG_BIN} (apt-get install postgresql-15)")
    share = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True).stdout.strip()
    control = Path(share) / "extension" / "q3c.control"
    if not control.exists():
        raise Q3CUnavailable(f"{control} missing (apt-get install postgresql-15-q3c)")
    try:
        server = LocalServer(settings=Q3C_SETTINGS).start()
    except ServerError as e:
        raise Q3CUnavailable(f"the PostgreSQL server did not start: {e}") from e
    n = len(ra)
    out: dict = {}
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn, conn.cursor() as cur:
            try:
                cur.execute("CREATE EXTENSION q3c")
            except psycopg.Error as e:
                raise Q3CUnavailable(f"CREATE EXTENSION q3c failed: {e}") from e
            out["version"] = cur.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'q3c'"
            ).fetchone()[0]

            t = time.perf_counter()
            with conn.transaction():
                cur.execute(
                    "CREATE TABLE cat (source_id bigint NOT NULL, ra float8 NOT NULL, dec float8 NOT NULL)"
                )
                cur.execute(
                    "CREATE TABLE det (det_id bigint NOT NULL, ra float8 NOT NULL, dec float8 NOT NULL)"
                )
                cat_rows = pgcopy_binary((cat["source_id"], ">i8"), (cat["ra"], ">f8"), (cat["dec"], ">f8"))
                _copy_in(cur, "cat", "source_id, ra, dec", cat_rows)
                det_rows = pgcopy_binary((np.arange(n), ">i8"), (ra, ">f8"), (dec, ">f8"))
                _copy_in(cur, "det", "det_id, ra, dec", det_rows)
            out["load"] = time.perf_counter() - t

            t = time.perf_counter()
            cur.execute("CREATE INDEX cat_q3c ON cat (q3c_ang2ipix(ra, dec))")
            cur.execute("CLUSTER cat USING cat_q3c")
            cur.execute("ANALYZE cat")
            cur.execute("ANALYZE det")
            out["index"] = time.perf_counter() - t
            sizes = "SELECT pg_relation_size('cat'), pg_relation_size('cat_q3c'), pg_relation_size('det')"
            out["mb"] = [b / 2**20 for b in cur.execute(sizes).fetchone()]

            pid = cur.execute("SELECT pg_backend_pid()").fetchone()[0]
            t, cpu = time.perf_counter(), _proc_cpu_s(pid)
            out["source_id"], out["sep_arcsec"] = _q3c_join(cur, "det", n, radius_arcsec)
            out["join"], out["join_cpu"] = time.perf_counter() - t, _proc_cpu_s(pid) - cpu

            t = time.perf_counter()
            cur.execute("CREATE TABLE det_sorted AS SELECT * FROM det ORDER BY q3c_ang2ipix(ra, dec)")
            cur.execute("ANALYZE det_sorted")
            out["sort"] = time.perf_counter() - t

            t, cpu = time.perf_counter(), _proc_cpu_s(pid)
            out["source_id_sorted"], _ = _q3c_join(cur, "det_sorted", n, radius_arcsec)
            out["join_sorted"], out["join_sorted_cpu"] = time.perf_counter() - t, _proc_cpu_s(pid) - cpu
    finally:
        server.destroy()
    return out


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


def report_differences(ours: np.ndarray, other: np.ndarray, cat, dxyz: np.ndarray, radius: float) -> None:
    """Classify detections whose principal source differs: radius edge, tie (equal separations), other."""
    diff = np.flatnonzero(ours != other)
    if len(diff) == 0:
        return
    order = np.argsort(cat["source_id"])
    ids = cat["source_id"][order]

    def sep(sid):  # our separation (arcsec) of each differing detection to sid, NaN for -1
        row = order[np.minimum(np.searchsorted(ids, sid), len(ids) - 1)]
        c = radec_to_xyz(cat["ra"][row], cat["dec"][row])
        s = 2.0 * np.arcsin(0.5 * np.linalg.norm(c - dxyz[diff], axis=1)) * 206264.80624709636
        return np.where(sid >= 0, s, np.nan)

    s_ours, s_other = sep(ours[diff]), sep(other[diff])
    one_sided = (ours[diff] < 0) | (other[diff] < 0)
    edge = one_sided & (np.abs(np.fmax(s_ours, s_other) - radius) < 1e-6)
    tie = ~one_sided & (np.abs(s_ours - s_other) < 1e-6)
    print(
        f"  differing: {int(edge.sum())} at the radius edge (within 1 uas), {int(tie.sum())} ties "
        f"(separations within 1 uas), {int((~edge & ~tie).sum())} other"
    )
    for i in range(min(5, len(diff))):
        k = diff[i]
        print(
            f"    detection {k}: ours {ours[k]} at {s_ours[i]:.9f}, other {other[k]} at {s_other[i]:.9f} as"
        )


def edge_cases(res, tree: cKDTree, dxyz: np.ndarray, radius: float) -> str:
    """How close the data come to the cases where exact methods may disagree (radius edge, ties)."""
    inside = radius - np.nanmax(res.sep_arcsec)
    d, _ = tree.query(dxyz[res.unmatched], k=1)
    outside = (2.0 * np.arcsin(0.5 * d.min()) * 206264.80624709636 - radius) if len(d) else np.inf
    det, sep = res.ambiguous["detection"], res.ambiguous["sep_arcsec"]
    first = np.flatnonzero(np.r_[True, det[1:] != det[:-1]])
    gap = (sep[first + 1] - sep[first]).min() if len(first) else np.inf
    return (
        f"edge cases: closest principal match {inside * 1e6:.3g} uas inside the radius, closest source of an "
        f"unmatched detection {outside * 1e6:.3g} uas outside; smallest gap between the two nearest "
        f"candidates {gap * 1e6:.3g} uas"
    )


def _cell(x: float, width: int, unit: str = "") -> str:
    return f"{x:{width}.2f}{unit}" if np.isfinite(x) else f"{'-':>{width}s}{' ' * len(unit)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detections", type=int, default=1_000_000)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--radius", type=float, default=1.0, help="arcsec")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-q3c", dest="q3c", action="store_false", help="skip the Q3C (PostgreSQL) run")
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
    t1, c1 = time.perf_counter(), time.process_time()
    res = crossmatch(index, ra, dec, new_sources=False)
    t2, c2 = time.perf_counter(), time.process_time()
    res_new = crossmatch(index, ra, dec)
    t3 = time.perf_counter()

    # cKDTree on unit vectors, nearest neighbour within the chord of the radius
    chord = 2.0 * np.sin(0.5 * np.deg2rad(args.radius / 3600.0))
    t4 = time.perf_counter()
    cxyz = radec_to_xyz(cat["ra"], cat["dec"])
    tree = cKDTree(cxyz)
    t5, c5 = time.perf_counter(), time.process_time()
    dxyz = radec_to_xyz(ra, dec)
    d, k = tree.query(dxyz, k=1, distance_upper_bound=chord)
    kd_sid = np.where(np.isfinite(d), cat["source_id"][np.minimum(k, len(cat) - 1)], -1)
    t6, c6 = time.perf_counter(), time.process_time()
    balls = tree.query_ball_point(dxyz, chord, return_length=True)
    t7 = time.perf_counter()

    # Q3C in PostgreSQL (after the in-memory methods, so its server does not disturb them)
    q3c, q3c_why = None, "skipped (--no-q3c)"
    if args.q3c:
        try:
            q3c = q3c_crossmatch(cat, ra, dec, args.radius)
        except Q3CUnavailable as e:
            q3c_why = str(e)

    same = np.array_equal(kd_sid, res.source_id)
    truth = src["source_id"][j]
    in_cat = ~absent[j]
    complete = np.mean(res.source_id[in_cat] == truth[in_cat])
    matched = res.source_id >= 0
    pure = np.mean(res.source_id[matched] == truth[matched])
    print(f"principal pairs identical to cKDTree: {same} ({int((kd_sid != res.source_id).sum())} differ)")
    if q3c is None:
        print(f"Q3C unavailable: {q3c_why}")
    else:
        for key, label in (("source_id", "arrival order"), ("source_id_sorted", "detections sorted")):
            n_diff = int((q3c[key] != res.source_id).sum())
            print(f"principal pairs identical to Q3C ({label}): {n_diff == 0} ({n_diff} differ)")
            report_differences(res.source_id, q3c[key], cat, dxyz, args.radius)
        sep_err = np.abs(q3c["sep_arcsec"][matched] - res.sep_arcsec[matched])
        print(f"separations, ours vs q3c_dist: max difference {sep_err.max() * 1e6:.2g} uas")
    print(f"candidate counts identical to query_ball_point: {np.array_equal(balls, res.n_candidates)}")
    print(
        f"completeness {complete:.6f}, purity {pure:.6f}, ambiguous detections "
        f"{int((res.n_candidates > 1).sum()):,}, unmatched {len(res.unmatched):,} -> "
        f"{len(res_new.new_sources['source_id']):,} new sources"
    )
    print(edge_cases(res, tree, dxyz, args.radius))
    print()

    na = float("nan")
    q = q3c or {"load": na, "index": na, "join": na, "sort": na, "join_sorted": na}
    q_sorted = q["load"] + q["index"] + q["sort"] + q["join_sorted"]
    w = 52
    head = f"{'ours (HEALPix)':>15s} {'cKDTree':>9s} {'Q3C':>9s} {'ours/tree':>10s} {'ours/Q3C':>9s}"
    print(f"{'step (tree / Q3C variant)':{w}s} {head}")
    rows = [
        ("build index (Q3C: index, CLUSTER, ANALYZE)", t1 - t0, t5 - t4, q["index"]),
        ("principal match (query k=1 / join, arrival order)", t2 - t1, t6 - t5, q["join"]),
        ("principal match (- / sort by ipix + join)", t2 - t1, na, q["sort"] + q["join_sorted"]),
        ("build + principal match", t2 - t0, t6 - t4, q["index"] + q["join"]),
        (
            "load + build + principal match (Q3C: arrival order)",
            t2 - t0,
            t6 - t4,
            q["load"] + q["index"] + q["join"],
        ),
        ("load + build + principal match (Q3C: sorted)", t2 - t0, t6 - t4, q_sorted),
        ("all candidates (query_ball_point / -)", t2 - t1, t7 - t6, na),
    ]
    for name, a, b, c in rows:
        times = f"{_cell(a, 14, 's')} {_cell(b, 8, 's')} {_cell(c, 8, 's')}"
        print(f"{name:{w}s} {times} {_cell(a / b, 10)} {_cell(a / c, 9)}")
    print(f"{'crossmatch incl. new-source ids (total)':{w}s} {t3 - t2:14.2f}s")
    print(f"detections per second (ours, build + match): {len(ra) / (t2 - t0):,.0f}")
    print("(ours returns the principal match, all candidates and counts in the one call)")
    q3c_cpu = "-" if q3c is None else f"{q3c['join_cpu']:.2f} s (sorted: {q3c['join_sorted_cpu']:.2f} s)"
    print(
        f"CPU time of the principal match (wall times above suffer from other load on shared cores): ours "
        f"{c2 - c1:.2f} s, cKDTree {c6 - c5:.2f} s, Q3C join server backend {q3c_cpu}"
    )
    if q3c is not None:
        settings = ", ".join(f"{k}={v}" for k, v in Q3C_SETTINGS.items())
        print(
            f"Q3C {q3c['version']} (PostgreSQL 15, one core: {settings}): "
            f"load {q3c['load']:.2f} s (binary COPY of {len(cat):,} + {len(ra):,} rows; tables "
            f"{q3c['mb'][0]:.0f} + {q3c['mb'][2]:.0f} MB, Q3C index {q3c['mb'][1]:.0f} MB), index "
            f"{q3c['index']:.2f} s, join {q3c['join']:.2f} s in arrival order, or sort {q3c['sort']:.2f} s "
            f"+ join {q3c['join_sorted']:.2f} s with the detections sorted by q3c_ang2ipix; Q3C column: "
            "join alone, index + join, load + index + join; rows fetched back into numpy"
        )


if __name__ == "__main__":
    main()
