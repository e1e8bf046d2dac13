"""The scan of an alerts run: per HEALPix pixel, ONE query for everything the detectors need, then
`evaluate`, in a pool of workers.

What a pixel's query returns (`fetch_pixel`), packed by the server into one bytea read by np.frombuffer:
- the full history (every transit) of the pixel's sources that got new data in the run: `transits` of
  that one partition (`healpix = p`, pruned at plan time) and those source ids; `new` marks the transits of
  the run's chunk revisions, `bad` those of a chunk revision with a health event (migration 0004) at or
  above thresholds.min_health_severity;
- the `sources` rows near those sources: themselves (position, catalogue G, origin) and every source
  that can be a brighter neighbour within thresholds.neighbour_radius_arcsec. "Near" is a set of HEALPix
  cells around each source's id cell (`neighbour_cells`): healpy's neighbours cross the pixel's edges,
  so a neighbour just over the border, in another partition, is read too, and only the thin band of the
  neighbouring partitions that matters is read (source-id ranges on their primary keys).

Source ids carry the level-12 cell of the source (docs/main_database.md), which is the cell of its
catalogue position for 99.85 % of the simulated catalogue; the rest are bright Gaia DR3 stars whose id cell
is the next one (up to 48 arcsec away: proper motion since the id was given). The cells are therefore
chosen at the finest order whose cells are at least 2 x (radius + ID_POSITION_SLACK_ARCSEC) across, and a
source's cell with its 8 neighbours covers every source within the radius of it.

`scan` runs `scan_pixel` for each pixel of the run in a thread pool, one read-only connection per
worker (the read DSN: a replica when configured). The workers wait on the database and in numpy, both
without the GIL: the Python work per pixel is a few calls, not a loop over rows. `per_source=True` is
the benchmark's baseline: the same work with one query per source (`fetch_pixel` for one id at a time),
everything else shared.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields

import healpy as hp
import numpy as np
import psycopg
from scipy.spatial import cKDTree

from pipeline.alerts.detect import Verdicts, evaluate
from pipeline.alerts.history import History, Sources
from pipeline.alerts.thresholds import SEVERITIES, Thresholds
from pipeline.db import one_row
from pipeline.db.load import ID_LEVEL, ID_SHIFT, over_pixels

ID_POSITION_SLACK_ARCSEC = 60.0  # largest offset of a source's id cell from its position (48" measured)
ARCSEC_RAD = np.pi / (180.0 * 3600.0)
MAX_RANGES = 256  # source-id ranges per query (each an index probe of one sources partition)


class ScanError(RuntimeError):
    """The database does not hold what the scan needs (the message names the pixel and the source)."""


@dataclass(frozen=True)
class PixelData:
    """What one pixel's query returned: the History and the Sources of its sources with new data."""

    pixel: int
    history: History
    sources: Sources
    origin_new: np.ndarray  # bool per Sources row: origin 'new' (created by the pipeline)


@dataclass(frozen=True)
class PixelResult:
    pixel: int
    verdicts: Verdicts
    ra: np.ndarray  # per verdict, deg (the source's position)
    dec: np.ndarray
    n_sources: int  # sources with new data examined
    n_transits: int  # history rows read
    n_queries: int


@dataclass
class ScanResult:
    """Every pixel's result, concatenated in pixel order."""

    pixels: list[int] = field(default_factory=list)
    verdicts: Verdicts = field(default_factory=Verdicts.empty)
    ra: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dec: np.ndarray = field(default_factory=lambda: np.zeros(0))
    healpix: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    n_sources: int = 0
    n_transits: int = 0
    n_queries: int = 0
    workers: int = 1


# --------------------------------------------------------------------------------------- pure geometry


def cell_order(radius_arcsec: float, pixel_order: int) -> int:
    """The finest HEALPix order (<= 12, >= pixel_order) whose cells are 2 x (radius + slack) across."""
    need = 2.0 * (radius_arcsec + ID_POSITION_SLACK_ARCSEC)
    for order in range(ID_LEVEL, pixel_order - 1, -1):
        if hp.nside2resol(1 << order, arcmin=True) * 60.0 >= need:
            return order
    raise ScanError(
        f"neighbour radius {radius_arcsec} arcsec is too large for pixels of order {pixel_order}"
        f" (cells of {hp.nside2resol(1 << pixel_order, arcmin=True) / 60:.2f} deg)"
    )


def neighbour_cells(
    source_ids: np.ndarray, radius_arcsec: float, pixel_order: int, max_ranges: int = MAX_RANGES
):
    """Source-id ranges of the cells around sources -> (lo, hi, pixel, pixels).

    Each source's id cell at cell_order() with its 8 neighbours (healpy, across pixel edges), merged
    into ranges of consecutive cells of one pixel: rows [lo, hi) of the `sources` partition `pixel`.
    Beyond max_ranges, the ranges of a pixel separated by the smallest gaps are merged (a few more
    rows read, far fewer index probes). pixels are the distinct partitions touched.
    """
    order = cell_order(radius_arcsec, pixel_order)
    shift = ID_SHIFT + 2 * (ID_LEVEL - order)
    cells = np.unique(np.asarray(source_ids, dtype=np.int64) >> shift)
    around = hp.get_all_neighbours(1 << order, cells, nest=True).ravel()
    cells = np.unique(np.r_[cells, around[around >= 0]])
    pix = (cells >> (2 * (order - pixel_order))).astype(np.int64)
    start = np.r_[True, (np.diff(cells) != 1) | (np.diff(pix) != 0)]
    first, last, rpix = cells[start], cells[np.r_[start[1:], True]], pix[start]
    if len(first) > max_ranges:  # merge across the smallest gaps within a pixel
        gap = np.where(rpix[1:] == rpix[:-1], first[1:] - last[:-1], np.iinfo(np.int64).max)
        n_merge = len(first) - max_ranges
        cut = np.sort(gap)[n_merge - 1]
        join = gap <= cut
        join &= np.cumsum(join) <= n_merge  # ties: no more merges than needed
        keep = np.r_[True, ~join]
        first, rpix = first[keep], rpix[keep]
        last = last[np.r_[keep[1:], True]]
    return first << shift, (last + 1) << shift, rpix, np.unique(pix)


def brighter_neighbours(ra, dec, g, cat_id, cat_ra, cat_dec, cat_g, ids, radius_arcsec: float) -> np.ndarray:
    """Per target (ids, ra, dec, g): is a catalogue source other than itself, brighter than g, within the
    radius? A target without a magnitude (g NaN) has none brighter."""
    out = np.zeros(len(ids), bool)
    if not len(ids) or not len(cat_id):
        return out
    tree = cKDTree(_unit(cat_ra, cat_dec))
    chord = 2.0 * np.sin(0.5 * radius_arcsec * ARCSEC_RAD)
    pairs = cKDTree(_unit(ra, dec)).sparse_distance_matrix(tree, chord, output_type="ndarray")
    i, j = pairs["i"], pairs["j"]
    with np.errstate(invalid="ignore"):
        hit = (cat_id[j] != ids[i]) & (cat_g[j] < g[i])
    out[i[hit]] = True
    return out


def _unit(ra, dec) -> np.ndarray:
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    return np.c_[np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]


# --------------------------------------------------------------------------------------- the one query

# One row per transit (kind 0: x = t, y = g_mag, z = g_mag_err, fov, flags, new, bad) or per source (kind 1:
# x = ra, y = dec, z = g_ref, fov = 1 if origin 'new'), packed by the server into ONE bytea of fixed-size
# big-endian records (the *send functions are PostgreSQL's binary output functions; NULL magnitudes are
# NaN): a single value to fetch and np.frombuffer, where a row per message (a plain SELECT or a COPY)
# costs the client ~5 us of Python per row.
_RECORD = np.dtype([
    ("kind", ">i2"), ("source_id", ">i8"), ("x", ">f8"), ("y", ">f8"), ("z", ">f8"), ("fov", ">i2"),
    ("flags", ">i4"), ("new", "u1"), ("bad", "u1"),
])  # fmt: skip

PIXEL_QUERY = """
SELECT string_agg(int2send(kind) || int8send(source_id) || float8send(x) || float8send(y)
                  || float8send(z) || int2send(fov) || int4send(flags) || boolsend(new) || boolsend(bad),
                  ''::bytea)
FROM (
  SELECT 0::smallint AS kind, h.source_id, h.t AS x, coalesce(h.g_mag, 'NaN')::float8 AS y,
         coalesce(h.g_mag_err, 'NaN')::float8 AS z, h.fov, h.flags,
         (h.chunk_id, h.revision) IN (SELECT * FROM unnest(%(new_c)s::bigint[], %(new_r)s::integer[])) AS new,
         EXISTS (SELECT 1 FROM health_events e WHERE e.chunk_id = h.chunk_id AND e.revision = h.revision
                 AND e.severity = ANY(%(severities)s::text[])) AS bad
  FROM transits h WHERE h.healpix = %(pixel)s::integer AND h.source_id = ANY(%(ids)s::bigint[])
  UNION ALL
  SELECT 1::smallint, s.source_id, s.ra, s.dec, coalesce(s.g_ref, 'NaN')::float8,
         (s.origin = 'new')::integer::smallint, 0, false, false
  FROM unnest(%(lo)s::bigint[], %(hi)s::bigint[], %(cell_pixel)s::integer[]) AS r (lo, hi, pixel)
  CROSS JOIN LATERAL (
    SELECT * FROM sources s WHERE s.healpix = ANY(%(near)s::integer[])
    AND s.healpix = r.pixel AND s.source_id >= r.lo AND s.source_id < r.hi
    OFFSET 0  -- keeps the lateral subquery a per-range index scan (a merge join would compare all pairs)
  ) s
) AS rows
"""


@dataclass(frozen=True)
class RunContext:
    """What every pixel query of a run shares."""

    new_revisions: tuple[tuple[int, int], ...]  # (chunk_id, revision) scanned by this run
    thresholds: Thresholds
    pixel_order: int

    @property
    def severities(self) -> list[str]:
        return list(SEVERITIES[SEVERITIES.index(self.thresholds.min_health_severity) :])


def _array(values) -> str:
    """An integer array parameter as PostgreSQL array text, typed by the cast in the query (`%s::integer[]`):
    one join, where psycopg's list adapter inspects every element (milliseconds for the thousands of ids
    of a pixel).

    The queries on the partitioned tables also run with prepare=False: psycopg prepares a statement run
    five times, and PostgreSQL may then plan it once for any parameters (a generic plan), over all 12,288
    partitions of each table: minutes of planning (measured), where a plan for the parameters given prunes
    to the partitions named."""
    return "{" + ",".join(map(str, np.asarray(values, dtype=np.int64).tolist())) + "}"


def fetch_pixel(conn: psycopg.Connection, ctx: RunContext, pixel: int, ids: np.ndarray) -> PixelData:
    """ONE query: the history of sources `ids` of `pixel`, the sources near them, the bad-chunk flags."""
    lo, hi, cell_pixel, near = neighbour_cells(ids, ctx.thresholds.neighbour_radius_arcsec, ctx.pixel_order)
    params = {
        "new_c": _array([c for c, _ in ctx.new_revisions]),
        "new_r": _array([r for _, r in ctx.new_revisions]),
        "severities": ctx.severities, "pixel": int(pixel), "ids": _array(ids), "lo": _array(lo),
        "hi": _array(hi), "cell_pixel": _array(cell_pixel), "near": _array(near),
    }  # fmt: skip
    (packed,) = one_row(conn.cursor(binary=True).execute(PIXEL_QUERY, params, prepare=False))
    packed = bytes(packed or b"")
    if len(packed) % _RECORD.itemsize:
        raise ScanError(f"pixel {pixel}: {len(packed)} bytes is not a whole number of records")
    rec = np.frombuffer(packed, _RECORD)
    return _pixel_data(pixel, rec, ids, ctx.thresholds.neighbour_radius_arcsec)


def _pixel_data(pixel: int, rec: np.ndarray, ids: np.ndarray, radius_arcsec: float) -> PixelData:
    tr, src = rec[rec["kind"] == 0], rec[rec["kind"] == 1]
    history = History.from_rows(
        source_id=tr["source_id"].astype(np.int64), t=tr["x"].astype(float), g_mag=tr["y"].astype(float),
        g_mag_err=tr["z"].astype(float), fov=tr["fov"].astype(np.int16), flags=tr["flags"].astype(np.int32),
        new=tr["new"].astype(bool), bad_chunk=tr["bad"].astype(bool),
    )  # fmt: skip
    sid = src["source_id"].astype(np.int64)
    order = np.argsort(sid, kind="stable")
    sid, src = sid[order], src[order]
    keep = np.r_[True, sid[1:] != sid[:-1]]  # a cell range never overlaps another; belt and braces
    sid, src = sid[keep], src[keep]
    hist_ids = np.unique(history.source_id)
    pos = np.searchsorted(sid, hist_ids)
    found = (pos < len(sid)) & (sid[np.minimum(pos, len(sid) - 1)] == hist_ids) if len(sid) else pos < 0
    if not np.all(found):
        raise ScanError(f"pixel {pixel}: source {int(hist_ids[~found][0])} has transits but no sources row")
    row = src[pos]
    g_ref = row["z"].astype(float)
    origin_new = row["fov"] == 1
    catalogue = (src["fov"] == 0) & np.isfinite(src["z"])
    brightness = np.where(np.isfinite(g_ref), g_ref, _median_mag(history, hist_ids))
    neighbour = brighter_neighbours(
        row["x"].astype(float), row["y"].astype(float), brightness, sid[catalogue],
        src["x"][catalogue].astype(float), src["y"][catalogue].astype(float),
        src["z"][catalogue].astype(float), hist_ids, radius_arcsec,
    )  # fmt: skip
    sources = Sources.from_rows(
        source_id=hist_ids, g_ref=g_ref, brighter_neighbour=neighbour,
        ra=row["x"].astype(float), dec=row["y"].astype(float),
    )  # fmt: skip
    return PixelData(pixel, history, sources, origin_new)


def _median_mag(history: History, ids: np.ndarray) -> np.ndarray:
    """Median G of each source's transits (for sources without a catalogue G: new sources)."""
    seg = np.searchsorted(ids, history.source_id)
    ok = np.isfinite(history.g_mag)
    out = np.full(len(ids), np.nan)
    if not ok.any():
        return out
    s, v = seg[ok], history.g_mag[ok]
    order = np.lexsort((v, s))
    s, v = s[order], v[order]
    cnt = np.bincount(s, minlength=len(ids))
    first = np.cumsum(cnt) - cnt
    has = cnt > 0
    out[has] = 0.5 * (v[(first + (cnt - 1) // 2)[has]] + v[(first + cnt // 2)[has]])
    return out


# --------------------------------------------------------------------------------------- per pixel


def scan_pixel(
    conn: psycopg.Connection, ctx: RunContext, pixel: int, ids: np.ndarray, per_source: bool = False
) -> PixelResult:
    """Fetch (one query, or one per source) and evaluate one pixel's sources with new data."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if per_source:
        parts = [fetch_pixel(conn, ctx, pixel, ids[k : k + 1]) for k in range(len(ids))]
        data = _merge(pixel, parts)
        n_queries = len(ids)
    else:
        data = fetch_pixel(conn, ctx, pixel, ids)
        n_queries = 1
    verdicts = evaluate(data.history, data.sources, ctx.thresholds)
    at = np.searchsorted(data.sources.source_id, verdicts.source_id)
    return PixelResult(
        pixel=pixel, verdicts=verdicts, ra=data.sources.ra[at], dec=data.sources.dec[at],
        n_sources=len(ids), n_transits=len(data.history), n_queries=n_queries,
    )  # fmt: skip


def _merge(pixel: int, parts: Sequence[PixelData]) -> PixelData:
    if not parts:
        return PixelData(pixel, History.empty(), Sources.from_rows(source_id=np.zeros(0, np.int64)),
                         np.zeros(0, bool))  # fmt: skip
    history = parts[0].history.concat(*(p.history for p in parts[1:]))
    cols = {f.name: np.concatenate([getattr(p.sources, f.name) for p in parts]) for f in fields(Sources)}
    return PixelData(pixel, history, Sources.from_rows(**cols),
                     np.concatenate([p.origin_new for p in parts]))  # fmt: skip


# --------------------------------------------------------------------------------------- planning


def new_sources_by_pixel(
    conn: psycopg.Connection, revisions: Sequence[tuple[int, int, Sequence[int]]]
) -> dict[int, np.ndarray]:
    """{pixel: sorted source ids with a transit in one of the chunk revisions}: one query per revision,
    over the pixels transit_chunks says it wrote to (revisions: (chunk_id, revision, pixels); one that
    wrote no transit is not queried: load.over_pixels)."""
    found: dict[int, list[np.ndarray]] = {}
    for chunk_id, revision, pixels in revisions:
        cur = over_pixels(conn, "SELECT DISTINCT healpix, source_id FROM transits"
                          " WHERE healpix = ANY(%s::integer[]) AND chunk_id = %s AND revision = %s",
                          pixels, (chunk_id, revision))  # fmt: skip
        rows = [] if cur is None else cur.fetchall()
        if rows:
            a = np.array(rows, dtype=np.int64)
            for p in np.unique(a[:, 0]):
                found.setdefault(int(p), []).append(a[a[:, 0] == p, 1])
    return {p: np.unique(np.concatenate(v)) for p, v in sorted(found.items())}


def server_cores(conn: psycopg.Connection) -> int | None:
    """The database server's core count, as far as the server tells: the custom setting soc.server_cores
    (postgresql.conf or ALTER SYSTEM), else max_parallel_workers when configured (tuning guides set it to
    the core count), else None (PostgreSQL has no portable way to report its host's cores)."""
    (cores,) = one_row(conn.execute("SELECT current_setting('soc.server_cores', true)"))
    if cores and cores.strip().isdigit() and int(cores) > 0:
        return int(cores)
    row = conn.execute(
        "SELECT setting, source FROM pg_settings WHERE name = 'max_parallel_workers'"
    ).fetchone()
    if row and row[1] not in ("default", "override") and int(row[0]) > 0:
        return int(row[0])
    return None


def default_workers(conn: psycopg.Connection) -> int:
    """Workers for a scan: the server's cores (server_cores), else this machine's."""
    return server_cores(conn) or os.cpu_count() or 1


# --------------------------------------------------------------------------------------- the pool


def scan(
    read_dsn: str,
    ctx: RunContext,
    work: dict[int, np.ndarray],
    workers: int,
    per_source: bool = False,
    on_pixel: Callable[[PixelResult], None] | None = None,
) -> ScanResult:
    """scan_pixel for every pixel of work ({pixel: source ids with new data}) on `workers` threads, each
    with its own read-only connection to read_dsn; the largest pixels first (the pool ends together).
    on_pixel(result) is called as each pixel finishes (a progress bar). Results in pixel order."""
    workers = max(1, int(workers))
    local = threading.local()
    conns: list[psycopg.Connection] = []
    lock = threading.Lock()

    def connection() -> psycopg.Connection:
        if not hasattr(local, "conn"):
            local.conn = psycopg.connect(read_dsn, autocommit=True)
            local.conn.execute("SET default_transaction_read_only = on")
            # JIT compiling costs tens of ms and a pixel's query takes a few: the row estimates of the
            # unnest() ranges are high enough to trigger it, so it is turned off for the scan
            local.conn.execute("SET jit = off")
            with lock:
                conns.append(local.conn)
        return local.conn

    def one(pixel: int) -> PixelResult:
        return scan_pixel(connection(), ctx, pixel, work[pixel], per_source)

    order = sorted(work, key=lambda p: (-len(work[p]), p))
    results: dict[int, PixelResult] = {}
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="alerts-scan") as pool:
            futures = {pool.submit(one, p): p for p in order}
            try:
                for fut in as_completed(futures):
                    r = fut.result()
                    results[r.pixel] = r
                    if on_pixel is not None:
                        on_pixel(r)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        for c in conns:
            c.close()
    return _combine([results[p] for p in sorted(results)], workers)


def _combine(parts: list[PixelResult], workers: int) -> ScanResult:
    out = ScanResult(workers=workers)
    if not parts:
        return out
    out.pixels = [p.pixel for p in parts]
    out.verdicts = Verdicts(
        **{f.name: np.concatenate([getattr(p.verdicts, f.name) for p in parts]) for f in fields(Verdicts)}
    )
    out.ra = np.concatenate([p.ra for p in parts])
    out.dec = np.concatenate([p.dec for p in parts])
    out.healpix = np.concatenate([np.full(len(p.verdicts), p.pixel, np.int32) for p in parts])
    out.n_sources = sum(p.n_sources for p in parts)
    out.n_transits = sum(p.n_transits for p in parts)
    out.n_queries = sum(p.n_queries for p in parts)
    return out
