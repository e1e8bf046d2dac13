"""Bulk loader of the Main Database science tables: transits by chunk, sources by upsert.

load_transits(conn, rows, chunk_id, revision) writes one chunk inside the caller's transaction (it never
commits): it deletes the rows any earlier revision of the chunk left, from the partitions that revision
wrote to (transit_chunks.pixels; a DELETE by chunk_id alone would plan, lock and probe all 12,288
partitions), then writes the new rows with one binary COPY into the partitioned table, sorted by
(healpix, source_id, obt) so that consecutive rows go to the same partition and the server batches them
(the sort is cut into pieces of whole pixels, each sorted while the previous one is being sent), and
records the chunk's revision, row count and pixels in transit_chunks.

The binary COPY stream is built with numpy, not row by row: a structured array with one record per row
(field count, then length and big-endian value of each field) is exactly the COPY BINARY tuple layout, so a
block of rows is a handful of column assignments and one buffer handed to Copy.write(). NULLs (masked
array entries, NaN in a nullable float column) and text values shorter than their column's widest value
are cut out of the buffer with one boolean mask over its bytes. `method="write_row"` is the plain psycopg
path (Copy.set_types + write_row per row), kept for the benchmark.

upsert_sources(conn, rows) adds sources that are not in the table yet and leaves existing ones unchanged:
binary COPY into a temporary staging table, then INSERT ... SELECT ... ON CONFLICT DO NOTHING.

load_transits_parallel(dsn, ...) splits a chunk by pixel ranges over several connections, one COPY stream
each; it is for the benchmark: the streams commit separately, so it is not one transaction.

Columns given as numpy arrays by name; healpix may be omitted (it is computed from source_id and the
database's healpix_order; if given, the database checks it). Design and measured figures:
docs/main_database.md.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from pipeline.db.migrate import settings

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"
BLOCK_ROWS = 1 << 13  # rows per buffer handed to Copy.write: 1.5 MB of transits, cache-sized (measured best)
PIECE_ROWS = 1 << 16  # rows per sorted piece (see sorted_pieces)
ID_LEVEL, ID_SHIFT = 12, 35  # Gaia source ids: level-12 nested HEALPix pixel in bits 35 and up

# PostgreSQL type -> numpy big-endian dtype of its binary COPY form ("text" is variable: handled apart).
_NP = {
    "bigint": ">i8", "integer": ">i4", "smallint": ">i2",
    "double precision": ">f8", "real": ">f4", "boolean": "u1", "text": None,
}  # fmt: skip


@dataclass(frozen=True)
class Column:
    name: str
    pgtype: str
    nullable: bool = False


TRANSIT_COLUMNS = (
    Column("source_id", "bigint"), Column("healpix", "integer"), Column("obt", "double precision"),
    Column("t", "double precision"), Column("chunk_id", "bigint"), Column("revision", "integer"),
    Column("apid", "smallint"), Column("seq", "integer"), Column("fov", "smallint"),
    Column("ccd_row", "smallint"), Column("ac_pixel", "smallint"),
    Column("ra", "double precision"), Column("dec", "double precision"),
    Column("pos_err_mas", "real", True), Column("g_flux", "real", True), Column("g_flux_err", "real", True),
    Column("g_mag", "real", True), Column("g_mag_err", "real", True),
    Column("n_good", "smallint"), Column("flags", "integer"), Column("match_dist_mas", "real", True),
    Column("ambiguous", "boolean"),
)  # fmt: skip
SOURCE_COLUMNS = (
    Column("source_id", "bigint"), Column("healpix", "integer"), Column("ra", "double precision"),
    Column("dec", "double precision"), Column("g_ref", "real", True), Column("origin", "text"),
)  # fmt: skip
TRANSIT_SORT_KEY = ("healpix", "source_id", "obt")


class LoadError(ValueError):
    pass


def healpix_shift(order: int) -> int:
    if not 0 <= order <= ID_LEVEL:
        raise LoadError(f"healpix_order must be within 0..{ID_LEVEL}, not {order}")
    return ID_SHIFT + 2 * (ID_LEVEL - order)


def healpix_of(source_id, order: int) -> np.ndarray:
    """Nested HEALPix pixel at ORDER of Gaia-style source ids: source_id >> (35 + 2 * (12 - order))."""
    return (np.asarray(source_id, dtype=np.int64) >> healpix_shift(order)).astype(np.int32)


def healpix_order(conn: psycopg.Connection) -> int:
    return int(settings(conn)["healpix_order"])


# ---------------------------------------------------------------------------------------------- encoding


def _prepare(columns: Sequence[Column], rows: Mapping[str, np.ndarray], n: int):
    """Per column: (values as a plain array, null mask or None). Refuses missing columns, bad lengths,
    NULLs and NaN in NOT NULL columns."""
    out = []
    for col in columns:
        if col.name not in rows:
            raise LoadError(f"column {col.name!r} missing")
        raw = rows[col.name]
        null = None
        if isinstance(raw, np.ma.MaskedArray):
            m = np.ma.getmaskarray(raw)
            null = m if m.any() else None
            raw = raw.filled(0 if col.pgtype != "text" else "")
        values = np.asarray(raw)
        if values.ndim == 0:
            values = np.broadcast_to(values, (n,))
        if values.shape != (n,):
            raise LoadError(f"column {col.name!r} has shape {values.shape}, expected ({n},)")
        if col.pgtype in ("double precision", "real") and values.dtype.kind == "f":
            nan = np.isnan(values)
            if nan.any():
                if not col.nullable:
                    raise LoadError(f"column {col.name!r} is NOT NULL but has {int(nan.sum())} NaN")
                null = nan if null is None else (null | nan)
        if null is not None and not col.nullable:
            raise LoadError(f"column {col.name!r} is NOT NULL but has {int(null.sum())} masked values")
        out.append((values, null))
    return out


def _text_field(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of text values as a fixed-width 'S' array and the byte length of each."""
    if values.dtype.kind == "S":
        enc = values
    else:
        enc = np.char.encode(values.astype(str), "utf-8")
    lens = np.char.str_len(enc).astype(np.int32)
    return enc, lens


class BinaryCopyEncoder:
    """Builds COPY BINARY tuple data for COLUMNS from numpy columns, a block of rows at a time."""

    def __init__(self, columns: Sequence[Column], rows: Mapping[str, np.ndarray]):
        self.columns = tuple(columns)
        lengths = {np.shape(rows[c.name])[0] for c in self.columns if np.ndim(rows.get(c.name, 0)) >= 1}
        self.n = lengths.pop() if len(lengths) == 1 else -1
        if self.n < 0:
            raise LoadError(f"columns of different lengths: {sorted(lengths)}")
        self.data = _prepare(self.columns, rows, self.n)
        fields: list[tuple[str, str]] = [("nf", ">i2")]
        self.text = {}
        for i, (col, (values, _)) in enumerate(zip(self.columns, self.data, strict=True)):
            np_type = _NP[col.pgtype]
            if np_type is None:
                enc, lens = _text_field(values)
                self.data[i] = (enc, self.data[i][1])
                self.text[i] = lens
                fields += [(f"l{i}", ">i4"), (f"v{i}", f"S{max(enc.dtype.itemsize, 1)}")]
            else:
                fields += [(f"l{i}", ">i4"), (f"v{i}", np_type)]
        self.dtype = np.dtype(fields)
        self.template = np.zeros((), self.dtype)
        self.template["nf"] = len(self.columns)
        for i in range(len(self.columns)):
            self.template[f"l{i}"] = self.dtype[f"v{i}"].itemsize
        self.variable = bool(self.text) or any(null is not None for _, null in self.data)

    def block(self, idx: np.ndarray | slice) -> memoryview:
        """The tuples of rows IDX (an index array or slice into the columns), in that order."""
        m = len(range(*idx.indices(self.n))) if isinstance(idx, slice) else len(idx)
        rec = np.empty(m, self.dtype)
        rec[...] = self.template  # field count and fixed lengths
        for i, (values, _) in enumerate(self.data):
            rec[f"v{i}"] = values[idx]
            if i in self.text:
                rec[f"l{i}"] = self.text[i][idx]
        if not self.variable:
            return rec.view(np.uint8).data
        width = self.dtype.itemsize
        keep = np.ones((m, width), dtype=bool)
        fields = self.dtype.fields
        assert fields is not None  # a structured dtype
        for i, (_, null) in enumerate(self.data):
            off, size = fields[f"v{i}"][1], self.dtype[f"v{i}"].itemsize
            if i in self.text:
                keep[:, off : off + size] = np.arange(size) < self.text[i][idx][:, None]
            if null is not None:
                nb = null[idx]
                if nb.any():
                    rec[f"l{i}"][nb] = -1
                    keep[nb, off : off + size] = False
        return rec.view(np.uint8).reshape(m, width)[keep].data

    def blocks(self, order=None, block_rows: int = BLOCK_ROWS) -> Iterator[memoryview]:
        """Header, the rows in blocks, trailer. ORDER: None (the rows as they are), an index array, or an
        iterable of index arrays (pieces, consumed one at a time: see sorted_pieces)."""
        yield memoryview(COPY_HEADER)
        if order is None:
            for start in range(0, self.n, block_rows):
                yield self.block(slice(start, min(start + block_rows, self.n)))
        else:
            for piece in [order] if isinstance(order, np.ndarray) else order:
                for start in range(0, len(piece), block_rows):
                    yield self.block(piece[start : start + block_rows])
        yield memoryview(COPY_TRAILER)


def copy_binary(
    conn: psycopg.Connection,
    table: str,
    columns: Sequence[Column],
    rows: Mapping[str, np.ndarray],
    order: np.ndarray | Iterable[np.ndarray] | None = None,
    *,
    method: str = "numpy",
    block_rows: int = BLOCK_ROWS,
) -> int:
    """COPY ROWS (in ORDER) into TABLE in binary; method "numpy" (blocks) or "write_row"; returns rows."""
    enc = BinaryCopyEncoder(columns, rows)
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(sql.Identifier(table), names)
    with conn.cursor() as cur:
        # The queued writer sends from a thread while the next block is being built.
        writer = QueuedLibpqWriter(cur) if method == "numpy" else None
        with cur.copy(stmt, writer=writer) as copy:
            _copy_rows(copy, enc, columns, order, method, block_rows)
    return enc.n


def _copy_rows(copy, enc: BinaryCopyEncoder, columns, order, method: str, block_rows: int) -> None:
    if method == "numpy":
        for buf in enc.blocks(order, block_rows):
            copy.write(buf)
    elif method == "write_row":
        copy.set_types([c.pgtype for c in columns])
        if order is None:
            idx = np.arange(enc.n)
        elif isinstance(order, np.ndarray):
            idx = order
        else:
            idx = np.concatenate([np.arange(0), *order]).astype(np.intp)
        cols = [(v[idx].tolist(), None if null is None else null[idx].tolist()) for v, null in enc.data]
        for i, c in enumerate(columns):
            if i in enc.text:
                cols[i] = ([b.decode() for b in cols[i][0]], cols[i][1])
            elif c.pgtype == "boolean":
                cols[i] = ([bool(b) for b in cols[i][0]], cols[i][1])
        for r in range(enc.n):
            copy.write_row([vals[r] if null is None or not null[r] else None for vals, null in cols])
    else:
        raise LoadError(f"unknown copy method {method!r}")


# ---------------------------------------------------------------------------------------------- transits


def empty_transits() -> dict:
    """The rows of a chunk revision without transits: every column load_transits takes, no row."""
    given = ("healpix", "chunk_id", "revision")  # derived or from the arguments
    return {c.name: np.zeros(0, _NP[c.pgtype]) for c in TRANSIT_COLUMNS if c.name not in given}


def _transit_rows(conn, rows: Mapping[str, np.ndarray], chunk_id: int, revision: int) -> dict:
    for key in ("chunk_id", "revision"):
        if key in rows:
            raise LoadError(f"{key!r} comes from the arguments, not from the rows")
    if "source_id" not in rows:
        raise LoadError("column 'source_id' missing")
    out: dict[str, np.ndarray | np.generic] = dict(rows)
    if "healpix" not in out:
        out["healpix"] = healpix_of(rows["source_id"], healpix_order(conn))
    for key in ("source_id", "healpix", "obt"):  # the sort keys (NOT NULL, so never masked)
        if not isinstance(out[key], np.ma.MaskedArray):
            out[key] = np.asarray(out[key])
    out["chunk_id"] = np.int64(chunk_id)
    out["revision"] = np.int32(revision)
    return out


def sorted_pieces(
    rows: Mapping[str, np.ndarray], piece_rows: int = PIECE_ROWS
) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    """Row order by (healpix, source_id, obt), so that consecutive rows go to the same partition, as
    (healpix in that order, an iterator of index arrays: consecutive pieces of the order).

    The rows are first bucketed by pixel (a stable radix argsort of healpix as uint16, 4 ms for a million
    rows), then each piece of about PIECE_ROWS rows (whole pixels) is sorted by (source_id, obt) only when
    the iterator reaches it: the sort of piece i+1 (numpy sorts without the GIL) runs while the COPY
    sends piece i, instead of a full sort (0.12 s a million rows) before the first row leaves."""
    h = np.asarray(rows["healpix"])
    key = h.astype(np.uint16) if len(h) and h.min() >= 0 and h.max() < 1 << 16 else h
    by_pixel = np.argsort(key, kind="stable")
    h_sorted = h[by_pixel]
    ranges = _split_by_pixel(h_sorted, max(1, -(-len(h) // piece_rows)))
    return h_sorted, (_sort_piece(rows, by_pixel[a:b]) for a, b in ranges)


def _sort_piece(rows: Mapping[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """IDX (whole pixels, in pixel order) sorted by (healpix, source_id, obt): argsorts least significant
    key first; obt's need not be stable ((source_id, obt) is unique); healpix is a prefix of source_id's
    bits, so its pass changes nothing unless a given healpix is wrong (the database refuses those)."""
    o = idx[np.argsort(np.asarray(rows["obt"])[idx])]
    o = o[np.argsort(np.asarray(rows["source_id"])[o], kind="stable")]
    return o[np.argsort(np.asarray(rows["healpix"])[o], kind="stable")]


def sort_order(rows: Mapping[str, np.ndarray]) -> np.ndarray:
    """The whole order of sorted_pieces as one index array."""
    pieces = list(sorted_pieces(rows)[1])
    return np.concatenate(pieces) if pieces else np.arange(0)


def _pixels(healpix_sorted: np.ndarray) -> list[int]:
    first = np.ones(len(healpix_sorted), dtype=bool)
    first[1:] = healpix_sorted[1:] != healpix_sorted[:-1]
    return healpix_sorted[first].tolist()


def delete_chunk(conn: psycopg.Connection, chunk_id: int) -> int:
    """Delete the transits of CHUNK_ID (any revision) and its transit_chunks row; returns rows deleted."""
    prev = conn.execute(
        "SELECT pixels FROM transit_chunks WHERE chunk_id = %s FOR UPDATE", (chunk_id,)
    ).fetchone()
    if prev is None:
        return 0
    cur = over_pixels(conn, "DELETE FROM transits WHERE healpix = ANY(%s::integer[]) AND chunk_id = %s",
                      prev[0], (chunk_id,))  # fmt: skip
    conn.execute("DELETE FROM transit_chunks WHERE chunk_id = %s", (chunk_id,))
    return 0 if cur is None else cur.rowcount


def over_pixels(conn: psycopg.Connection, sql: str, pixels, params=(), binary: bool = False):
    """Run SQL, a statement on transits whose first parameter is the HEALPix pixels it is pruned to
    (`healpix = ANY(%s::integer[])`: those transit_chunks records for a chunk) -> its cursor; None, and
    nothing run, for no pixels: an empty list prunes no partition, and the statement would plan (and lock)
    all 12,288 of them. Not prepared: a custom plan prunes at plan time (a generic plan would lock every
    partition before pruning)."""
    if not pixels:
        return None
    return conn.cursor(binary=binary).execute(sql, (list(pixels), *params), prepare=False)


def read_transits(conn: psycopg.Connection, chunk_id: int) -> tuple[int, dict[str, np.ndarray]] | None:
    """The transits of CHUNK_ID as loaded (its current revision) -> (revision, {column of TRANSIT_COLUMNS:
    values}, NULLs masked in the nullable columns); None if the chunk was never loaded. Read in binary
    (every value exactly as stored), over the pixels transit_chunks records."""
    loaded = conn.execute(
        "SELECT revision, pixels FROM transit_chunks WHERE chunk_id = %s", (chunk_id,)
    ).fetchone()
    if loaded is None:
        return None
    revision, pixels = loaded
    columns = ", ".join(c.name for c in TRANSIT_COLUMNS)
    sql = f"SELECT {columns} FROM transits WHERE healpix = ANY(%s::integer[]) AND chunk_id = %s"
    cur = over_pixels(conn, sql, pixels, (chunk_id,), binary=True)
    rows = [] if cur is None else cur.fetchall()
    out: dict[str, np.ndarray] = {}
    for i, c in enumerate(TRANSIT_COLUMNS):
        values = [r[i] for r in rows]
        dtype = np.dtype(_NP[c.pgtype]).newbyteorder("=")
        if c.nullable:
            null = np.array([v is None for v in values], dtype=bool)
            data = np.array([0 if v is None else v for v in values], dtype=dtype)
            out[c.name] = np.ma.MaskedArray(data, mask=null)
        else:
            out[c.name] = np.array(values, dtype=dtype)
    return revision, out


def load_transits(
    conn: psycopg.Connection,
    rows: Mapping[str, np.ndarray],
    chunk_id: int,
    revision: int,
    *,
    method: str = "numpy",
    block_rows: int = BLOCK_ROWS,
    sort: bool = True,
) -> int:
    """Replace chunk CHUNK_ID's transits by ROWS (revision REVISION) in the caller's transaction; returns
    the rows written. ROWS: numpy columns named as in TRANSIT_COLUMNS, without chunk_id and revision;
    healpix optional. sort=False keeps the given order (for the benchmark)."""
    rows = _transit_rows(conn, rows, chunk_id, revision)
    if sort:
        h_sorted, order = sorted_pieces(rows)
        pixels = _pixels(h_sorted)
    else:
        order, pixels = None, np.unique(rows["healpix"]).tolist()
    with conn.transaction():  # a savepoint inside the caller's transaction
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('soc-transits'), hashtext(%s))", (str(chunk_id),))
        delete_chunk(conn, chunk_id)
        n = copy_binary(conn, "transits", TRANSIT_COLUMNS, rows, order, method=method, block_rows=block_rows)
        conn.execute(
            "INSERT INTO transit_chunks (chunk_id, revision, n_transits, pixels) VALUES (%s, %s, %s, %s)",
            (chunk_id, revision, n, pixels),
        )
    return n


def _split_by_pixel(healpix_sorted: np.ndarray, streams: int) -> list[tuple[int, int]]:
    """Cut sorted rows into STREAMS contiguous ranges of about equal size, at pixel boundaries."""
    n = len(healpix_sorted)
    cuts = [0]
    for s in range(1, streams):
        c = int(np.searchsorted(healpix_sorted, healpix_sorted[min(n * s // streams, n - 1)], side="left"))
        cuts.append(max(c, cuts[-1]))
    cuts.append(n)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def load_transits_parallel(
    dsn: str, rows: Mapping[str, np.ndarray], chunk_id: int, revision: int, *, streams: int = 2
) -> int:
    """load_transits over STREAMS connections (pixel ranges), each COPY in its own transaction.

    For the benchmark: the delete of the previous revision commits first and the streams commit one by
    one, so a failure can leave a chunk partly loaded (load it again to repair)."""
    with psycopg.connect(dsn) as conn:
        rows = _transit_rows(conn, rows, chunk_id, revision)
        order = sort_order(rows)
        pixels = _pixels(rows["healpix"][order])
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('soc-transits'), hashtext(%s))", (str(chunk_id),))
        delete_chunk(conn, chunk_id)
        conn.execute(
            "INSERT INTO transit_chunks (chunk_id, revision, n_transits, pixels) VALUES (%s, %s, %s, %s)",
            (chunk_id, revision, len(order), pixels),
        )
        conn.commit()
    ranges = _split_by_pixel(np.asarray(rows["healpix"])[order], streams)
    errors: list[BaseException] = []

    def stream(a: int, b: int) -> None:
        try:
            with psycopg.connect(dsn) as c:
                copy_binary(c, "transits", TRANSIT_COLUMNS, rows, order[a:b])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=r) for r in ranges]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return len(order)


# ---------------------------------------------------------------------------------------------- sources

_SOURCE_STAGE = """
CREATE TEMP TABLE sources_stage (
    source_id bigint, healpix integer, ra double precision, dec double precision, g_ref real, origin text
) ON COMMIT DROP
"""


def upsert_sources(conn: psycopg.Connection, rows: Mapping[str, np.ndarray]) -> int:
    """Insert the sources of ROWS not yet in the table, leave the others unchanged (caller's
    transaction); returns the number inserted. g_ref NaN (or masked) is NULL; healpix optional."""
    rows = dict(rows)
    if "healpix" not in rows:
        rows["healpix"] = healpix_of(rows["source_id"], healpix_order(conn))
    with conn.transaction():
        conn.execute("DROP TABLE IF EXISTS pg_temp.sources_stage")
        conn.execute(_SOURCE_STAGE)
        copy_binary(conn, "sources_stage", SOURCE_COLUMNS, rows)
        cur = conn.execute(
            "INSERT INTO sources (source_id, healpix, ra, dec, g_ref, origin)"
            " SELECT source_id, healpix, ra, dec, g_ref, origin FROM sources_stage"
            " ORDER BY healpix, source_id ON CONFLICT DO NOTHING"
        )
        conn.execute("DROP TABLE sources_stage")
    return cur.rowcount
