"""Downstream products: one Parquet file and one JSON manifest per chunk revision, and the consumer's check.

Every revision of a time-ordered chunk (pipeline/chunks.py) becomes a product for the other data centres:

    outbox/chunk-<chunk_id>-r<revision>.parquet         the chunk's transits (columns of migration 0002)
    outbox/chunk-<chunk_id>-r<revision>.manifest.json   what the Parquet file holds, written last

Both files go through a unique temporary name and are published with a hard link (which never replaces an
existing file), the manifest last: a manifest marks a complete product. The bytes of both depend only on
the inputs (and on the pyarrow/zstd versions): rows sorted by (source_id, obt), fixed writer options, no
timestamps anywhere, so writing the same product again changes nothing, and writing a different product
under an existing name is refused (ProductConflict).

verify_product(manifest) is what a consumer runs: integrity (size, sha256, Parquet page CRCs), the declared
structure (row count, columns and types), the content digests (encoding-independent, per column), and the
semantics (rows sorted and unique on (source_id, obt), chunk_id and revision of every row, obt within the
chunk). It reports every failed check, never just the first. Format and threat model: docs/products.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.instrument import CCD_CROSSING_S, N_AF

FORMAT = "soc-chunk-product/1"
PARQUET_SUFFIX = ".parquet"
MANIFEST_SUFFIX = ".manifest.json"
SORT_KEY = ("source_id", "obt")
# A transit belongs to the chunk of its star packet (the OBT of AF1); its obt is the mean OBT of its
# windows, up to 8 CCD crossings (plus the AL offsets) later. So a transit of a chunk may lie up to about
# 36 s past the chunk's end (and 0.13 s before its start). The same margin as chunks.END_MARGIN_S.
OBT_MARGIN_S = (N_AF + 1) * CCD_CROSSING_S
ROW_GROUP_ROWS = 1 << 20
# Every Parquet writer option that could change the bytes, pinned (pyarrow's defaults move between versions).
PARQUET_OPTIONS: dict = {
    "version": "2.6",
    "data_page_version": "1.0",
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "store_schema": True,  # ARROW:schema in the footer, the only key-value metadata (no timestamps)
    "write_page_index": False,
    "write_page_checksum": True,  # CRC-32 of every page: readers verify them (page_checksum_verification)
    "use_byte_stream_split": False,
}

# The transits columns of migration 0002, in its order: (name, Arrow type, nullable).
_PG_TO_ARROW = {
    "bigint": pa.int64(), "integer": pa.int32(), "smallint": pa.int16(),
    "double precision": pa.float64(), "real": pa.float32(), "boolean": pa.bool_(),
}  # fmt: skip
_COLUMNS_PG = (
    ("source_id", "bigint", False), ("healpix", "integer", False), ("obt", "double precision", False),
    ("t", "double precision", False), ("chunk_id", "bigint", False), ("revision", "integer", False),
    ("apid", "smallint", False), ("seq", "integer", False), ("fov", "smallint", False),
    ("ccd_row", "smallint", False), ("ac_pixel", "smallint", False),
    ("ra", "double precision", False), ("dec", "double precision", False),
    ("pos_err_mas", "real", True), ("g_flux", "real", True), ("g_flux_err", "real", True),
    ("g_mag", "real", True), ("g_mag_err", "real", True),
    ("n_good", "smallint", False), ("flags", "integer", False), ("match_dist_mas", "real", True),
    ("ambiguous", "boolean", False),
)  # fmt: skip
SCHEMA = pa.schema([pa.field(n, _PG_TO_ARROW[t], nullable=nl) for n, t, nl in _COLUMNS_PG])
COLUMNS = tuple(SCHEMA.names)

CHECKS = (
    "manifest",  # readable JSON of this format, every field present with its type
    "name",  # file names agree with chunk_id and revision
    "chunk_bounds",  # chunk start/end = chunk_id * chunk_seconds, (chunk_id + 1) * chunk_seconds
    "supersedes",  # null for revision 1, else the previous revision's Parquet file
    "file_present",
    "size",
    "sha256",
    "parquet_readable",  # footer and every page (page CRCs verified)
    "row_count",
    "columns",  # names, types and nullability as the manifest and the format declare
    "column_digests",  # per-column content digests
    "content_digest",  # the row-content digest over all columns
    "sorted_unique",  # rows strictly increasing in (source_id, obt)
    "chunk_id",
    "revision",
    "obt_in_chunk",
)

_NAME_RE = re.compile(r"^chunk-(\d+)-r(\d+)" + re.escape(MANIFEST_SUFFIX) + "$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ProductError(ValueError):
    """The product cannot be written as asked (bad input)."""


class ProductConflict(ProductError):
    """A different file already exists under the product's name; published products never change."""


# ------------------------------------------------------------------------------------------------ names


def product_stem(chunk_id: int, revision: int) -> str:
    if int(chunk_id) < 0 or int(revision) < 1:
        raise ProductError(f"chunk_id must be >= 0 and revision >= 1, not {chunk_id}, {revision}")
    return f"chunk-{int(chunk_id)}-r{int(revision)}"


def parquet_name(chunk_id: int, revision: int) -> str:
    return product_stem(chunk_id, revision) + PARQUET_SUFFIX


def manifest_name(chunk_id: int, revision: int) -> str:
    return product_stem(chunk_id, revision) + MANIFEST_SUFFIX


def chunk_bounds(chunk_id: int, chunk_seconds: float) -> tuple[float, float]:
    """[start, end) OBT of a chunk: chunk_id = floor(obt / chunk_seconds)."""
    cs = float(chunk_seconds)
    return int(chunk_id) * cs, (int(chunk_id) + 1) * cs


# ---------------------------------------------------------------------------------------------- digests


def column_digest(values: np.ndarray, valid: np.ndarray | None, nullable: bool) -> str:
    """sha256 of a column's canonical bytes.

    Values as little-endian fixed-width numbers of the column's type (booleans one byte 0/1), NULLs as
    zero bytes; a nullable column is prefixed by one validity byte per row (1 value, 0 NULL), whether or
    not it holds NULLs. Independent of the Parquet encoding: any reader can recompute it.
    """
    values = np.asarray(values)
    h = hashlib.sha256()
    if nullable:
        ok = np.ones(len(values), bool) if valid is None else np.asarray(valid, bool)
        h.update(ok.astype(np.uint8).tobytes())
        if not ok.all():
            values = np.where(ok, values, np.zeros(1, values.dtype))
    if values.dtype == np.bool_:
        h.update(values.astype(np.uint8).tobytes())
    else:
        h.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def content_digest(row_count: int, columns: Sequence[Mapping]) -> str:
    """The row-content digest: sha256 of "rows <n>\\n" then "<name> <type> <column sha256>\\n" per column."""
    text = f"rows {int(row_count)}\n" + "".join(f"{c['name']} {c['type']} {c['sha256']}\n" for c in columns)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _arrow_column(col) -> tuple[np.ndarray, np.ndarray | None]:
    """A (chunked) Arrow column -> (values with NULLs as zero, validity or None when there are no NULLs)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    valid = None
    if arr.null_count:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        arr = arr.fill_null(pa.scalar(False if pa.types.is_boolean(arr.type) else 0, arr.type))
    return arr.to_numpy(zero_copy_only=False), valid


def table_digests(table: pa.Table) -> tuple[list[dict], str]:
    """([{name, type, nullable, sha256}] per column, content digest) of a table (nullability: its schema)."""
    cols = []
    for f in table.schema:
        values, valid = _arrow_column(table.column(f.name))
        cols.append({"name": f.name, "type": str(f.type), "nullable": bool(f.nullable),
                     "sha256": column_digest(values, valid, f.nullable)})  # fmt: skip
    return cols, content_digest(table.num_rows, cols)


# ---------------------------------------------------------------------------------------------- writing


Canonical = dict[str, tuple[np.ndarray, np.ndarray | None]]


def _canonical(transits: Mapping[str, np.ndarray]) -> tuple[Canonical, int]:
    """Input columns -> {name: (values of the column's dtype, validity or None)}, checked."""
    missing = [c for c in COLUMNS if c not in transits]
    extra = sorted(set(transits) - set(COLUMNS))
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {extra}"] if extra else [])
        raise ProductError("transits columns differ from migration 0002's: " + "; ".join(parts))
    if any(np.ndim(transits[c]) > 1 for c in COLUMNS):
        raise ProductError("transits columns must be 1-d arrays (or scalars)")
    lengths = {len(transits[c]) for c in COLUMNS if np.ndim(transits[c]) == 1}
    if len(lengths) > 1:
        raise ProductError(f"transits columns have different lengths: {sorted(lengths)}")
    if not lengths:
        raise ProductError("transits has no array column: cannot tell the row count")
    n = lengths.pop()
    out = {}
    for f in SCHEMA:
        raw = transits[f.name]
        null = np.ma.getmaskarray(raw) if isinstance(raw, np.ma.MaskedArray) else None
        a = np.asarray(np.ma.getdata(raw))
        if a.ndim == 0:
            a = np.broadcast_to(a, (n,))
            null = None if null is None else np.broadcast_to(null, (n,))
        dt = np.dtype(f.type.to_pandas_dtype())
        if null is not None and not null.any():
            null = None
        if null is not None:
            a = np.where(null, np.zeros(1, a.dtype), a)
        if dt.kind == "f":
            if a.dtype.kind not in "iuf":
                raise ProductError(f"column {f.name!r}: {a.dtype} is not numeric")
            a = a.astype(dt)
            nan = np.isnan(a)
            if nan.any():
                null = nan if null is None else (null | nan)
                a = np.where(nan, np.zeros(1, dt), a)
        elif dt.kind == "b":
            if a.dtype.kind == "b":
                a = a.astype(bool)
            elif a.dtype.kind in "iu" and np.isin(a, (0, 1)).all():
                a = a.astype(bool)
            else:
                raise ProductError(f"column {f.name!r}: {a.dtype} is not boolean")
        else:
            if a.dtype.kind not in "iu":
                raise ProductError(f"column {f.name!r}: {a.dtype} is not an integer type")
            info = np.iinfo(dt)
            if n and (int(a.min()) < info.min or int(a.max()) > info.max):
                raise ProductError(f"column {f.name!r}: values outside the range of {f.type}")
            a = a.astype(dt)
        if null is not None and not f.nullable:
            raise ProductError(f"column {f.name!r} is NOT NULL but has {int(null.sum())} NULL/NaN values")
        out[f.name] = (np.ascontiguousarray(a), None if null is None else ~null)
    return out, n


def _row_problems(sid, obt, chunk, rev, chunk_id, revision, lo, hi) -> list[tuple[str, str]]:
    """The semantic row checks shared by the writer and verify_product: [(check, message)]."""
    problems = []
    same = sid[1:] == sid[:-1]
    dup = same & (obt[1:] == obt[:-1])
    increasing = (sid[1:] > sid[:-1]) | (same & (obt[1:] > obt[:-1]))
    n_dup, n_unsorted = int(dup.sum()), int((~increasing & ~dup).sum())
    if n_dup or n_unsorted:
        parts = []
        if n_unsorted:
            i = int(np.flatnonzero(~increasing & ~dup)[0])
            parts.append(f"{n_unsorted} pair(s) out of (source_id, obt) order, first at row index {i + 1}")
        if n_dup:
            i = int(np.flatnonzero(dup)[0])
            parts.append(
                f"{n_dup} duplicate (source_id, obt) key(s), e.g. ({int(sid[i])}, {float(obt[i])!r})"
            )
        problems.append(("sorted_unique", "; ".join(parts)))
    for name, col, want in (("chunk_id", chunk, chunk_id), ("revision", rev, revision)):
        bad = col != want
        if bad.any():
            seen = sorted({int(v) for v in np.unique(col[bad])[:5]})
            problems.append((name, f"{int(bad.sum())} row(s) with {name} other than {want} (e.g. {seen})"))
    out = ~((obt >= lo) & (obt < hi))  # NaN is outside too
    if out.any():
        problems.append((
            "obt_in_chunk",
            f"{int(out.sum())} row(s) with obt outside [{lo!r}, {hi!r}) (the chunk widened by the margin),"
            f" e.g. {float(obt[out][0])!r}",
        ))  # fmt: skip
    return problems


def parquet_bytes(table: pa.Table) -> bytes:
    """The Parquet encoding of a product table, with the pinned writer options (deterministic)."""
    sink = pa.BufferOutputStream()
    sorting = [pq.SortingColumn(table.schema.get_field_index(k)) for k in SORT_KEY]
    with pq.ParquetWriter(sink, table.schema, sorting_columns=sorting, **PARQUET_OPTIONS) as w:
        w.write_table(table, row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue().to_pybytes()


def manifest_text(manifest: Mapping) -> bytes:
    """A manifest's bytes: sorted keys, indent 2, ASCII, trailing newline (deterministic)."""
    text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode("ascii")


def build_product(
    chunk_id: int,
    revision: int,
    transits: Mapping[str, np.ndarray],
    *,
    input_digest: str,
    software_version: str,
    chunk_seconds: float,
    obt_margin_s: float = OBT_MARGIN_S,
) -> tuple[bytes, bytes]:
    """(Parquet bytes, manifest bytes) of a product, in memory; refuses input that would not verify."""
    chunk_id, revision = int(chunk_id), int(revision)
    product_stem(chunk_id, revision)
    cs, margin = float(chunk_seconds), float(obt_margin_s)
    if not (math.isfinite(cs) and cs > 0):
        raise ProductError(f"chunk_seconds must be a positive number, not {chunk_seconds!r}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ProductError(f"obt_margin_s must be >= 0, not {obt_margin_s!r}")
    for name, v in (("input_digest", input_digest), ("software_version", software_version)):
        if not isinstance(v, str) or not v:
            raise ProductError(f"{name} must be a non-empty string")
    cols, n = _canonical(transits)
    order = np.lexsort((cols["obt"][0], cols["source_id"][0]))
    cols = {k: (v[order], None if ok is None else ok[order]) for k, (v, ok) in cols.items()}
    start, end = chunk_bounds(chunk_id, cs)
    problems = _row_problems(cols["source_id"][0], cols["obt"][0], cols["chunk_id"][0], cols["revision"][0],
                             chunk_id, revision, start - margin, end + margin)  # fmt: skip
    if problems:
        raise ProductError(
            f"{product_stem(chunk_id, revision)}: " + "; ".join(f"{c}: {m}" for c, m in problems)
        )
    arrays = [
        pa.array(v, type=f.type, mask=None if ok is None else ~ok)
        for f, (v, ok) in zip(SCHEMA, (cols[c] for c in COLUMNS), strict=True)
    ]
    table = pa.Table.from_arrays(arrays, schema=SCHEMA)
    data = parquet_bytes(table)
    col_entries, content = table_digests(table)
    manifest = {
        "format": FORMAT,
        "chunk_id": chunk_id,
        "revision": revision,
        "chunk_seconds": cs,
        "chunk_start_obt": start,
        "chunk_end_obt": end,
        "obt_margin_s": margin,
        "file": parquet_name(chunk_id, revision),
        "byte_count": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "row_count": n,
        "sort_key": list(SORT_KEY),
        "columns": col_entries,
        "content_sha256": content,
        "input_digest": input_digest,
        "software_version": software_version,
        "supersedes": parquet_name(chunk_id, revision - 1) if revision > 1 else None,
    }
    return data, manifest_text(manifest)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _same_file(path: Path, data: bytes) -> bool | None:
    """None if path does not exist, else whether it holds exactly data."""
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except FileNotFoundError:
        return None


def _conflict(path: Path) -> ProductConflict:
    return ProductConflict(
        f"{path} exists with different content: a published product never changes; a new reduction of the"
        " chunk is a new revision (if the file is a leftover of a failed attempt, remove it by hand)"
    )


def _publish(path: Path, data: bytes) -> bool:
    """Write data to path through a unique temporary file; never replace a different file. -> written?"""
    same = _same_file(path, data)
    if same is not None:
        if same:
            return False
        raise _conflict(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        try:
            os.link(tmp, path)  # atomic, and fails where the name exists (os.replace would clobber)
        except FileExistsError:
            if not _same_file(path, data):  # another writer published first
                raise _conflict(path) from None
            return False
        except OSError:  # a file system without hard links: check, then rename (not race-free)
            if _same_file(path, data) is False:
                raise _conflict(path) from None
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def write_product(
    outbox: Path,
    chunk_id: int,
    revision: int,
    transits: Mapping[str, np.ndarray],
    *,
    input_digest: str,
    software_version: str,
    chunk_seconds: float,
    obt_margin_s: float = OBT_MARGIN_S,
) -> Path:
    """Write chunk-<chunk_id>-r<revision>.parquet, then its manifest, into outbox -> the manifest's path.

    transits: the migration-0002 columns as arrays (NaN or masked entries of a nullable column are NULL);
    rows in any order (the product is sorted by (source_id, obt)). Every row must carry this chunk_id and
    revision, a unique (source_id, obt) and an obt within the chunk (widened by obt_margin_s). Writing the
    same product again leaves the files as they are; a different file under either name raises
    ProductConflict before anything is written.
    """
    data, manifest = build_product(
        chunk_id, revision, transits, input_digest=input_digest, software_version=software_version,
        chunk_seconds=chunk_seconds, obt_margin_s=obt_margin_s,
    )  # fmt: skip
    outbox = Path(outbox)
    outbox.mkdir(parents=True, exist_ok=True)
    data_path = outbox / parquet_name(chunk_id, revision)
    manifest_path = outbox / manifest_name(chunk_id, revision)
    for path, content in ((data_path, data), (manifest_path, manifest)):  # refuse before writing anything
        if _same_file(path, content) is False:
            raise _conflict(path)
    _publish(data_path, data)
    _publish(manifest_path, manifest)  # last: its presence marks a complete product
    return manifest_path


# ---------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class ProductRef:
    chunk_id: int
    revision: int
    manifest: Path

    @property
    def parquet(self) -> Path:
        return self.manifest.with_name(parquet_name(self.chunk_id, self.revision))


def list_products(outbox: Path) -> list[ProductRef]:
    """Every complete product (a manifest is present) in outbox, sorted by (chunk_id, revision)."""
    refs = []
    for p in Path(outbox).glob("chunk-*" + MANIFEST_SUFFIX):
        m = _NAME_RE.match(p.name)
        if m and int(m.group(2)) >= 1:
            refs.append(ProductRef(int(m.group(1)), int(m.group(2)), p))
    return sorted(refs, key=lambda r: (r.chunk_id, r.revision))


def latest_revisions(outbox: Path) -> dict[int, ProductRef]:
    """{chunk_id: its current (highest) revision}, by chunk_id; older revisions are superseded, not gone."""
    latest: dict[int, ProductRef] = {}
    for ref in list_products(outbox):
        latest[ref.chunk_id] = ref  # sorted by revision: the last one wins
    return latest


# -------------------------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class CheckFailure:
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of every check of CHECKS: failed (with a message), passed, or skipped (not possible
    because of an earlier failure, e.g. no data checks on a missing or unreadable file)."""

    manifest: Path
    failures: tuple[CheckFailure, ...]
    passed: tuple[str, ...]
    skipped: tuple[str, ...]
    chunk_id: int | None = None
    revision: int | None = None
    row_count: int | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(f.check for f in self.failures)

    def line(self) -> str:
        """One line: 'OK <manifest> (...)' or 'FAILED <manifest>: check: message; ...'."""
        if self.ok:
            return f"OK {self.manifest} (chunk {self.chunk_id} r{self.revision}, {self.row_count} rows)"
        return f"FAILED {self.manifest}: " + "; ".join(str(f) for f in self.failures)


_NUM = (int, float)
_MANIFEST_FIELDS: dict[str, tuple] = {
    "format": (str,), "chunk_id": (int,), "revision": (int,), "chunk_seconds": _NUM,
    "chunk_start_obt": _NUM, "chunk_end_obt": _NUM, "obt_margin_s": _NUM, "file": (str,),
    "byte_count": (int,), "sha256": (str,), "row_count": (int,), "sort_key": (list,), "columns": (list,),
    "content_sha256": (str,), "input_digest": (str,), "software_version": (str,),
    "supersedes": (str, type(None)),
}  # fmt: skip
_COLUMN_FIELDS = {"name": (str,), "type": (str,), "nullable": (bool,), "sha256": (str,)}


def _fields_problems(d, spec: Mapping[str, tuple], where: str) -> list[str]:
    if not isinstance(d, dict):
        return [f"{where} is not a JSON object"]
    out = []
    if missing := [k for k in spec if k not in d]:
        out.append(f"{where} lacks {missing}")
    if extra := sorted(set(d) - set(spec)):
        out.append(f"{where} has unknown fields {extra}")
    for k, types in spec.items():
        if k in d and (not isinstance(d[k], types) or (isinstance(d[k], bool) and bool not in types)):
            out.append(f"{where}.{k} is {type(d[k]).__name__}, not {'/'.join(t.__name__ for t in types)}")
    return out


def _manifest_problems(m) -> list[str]:
    problems = _fields_problems(m, _MANIFEST_FIELDS, "manifest")
    if problems:
        return problems
    if m["format"] != FORMAT:
        problems.append(f"format {m['format']!r} is not {FORMAT!r}")
    if m["chunk_id"] < 0 or m["revision"] < 1:
        problems.append(f"chunk_id {m['chunk_id']} must be >= 0 and revision {m['revision']} >= 1")
    if m["byte_count"] < 0 or m["row_count"] < 0:
        problems.append("byte_count and row_count must be >= 0")
    for k in ("sha256", "content_sha256"):
        if not _HEX64.match(m[k]):
            problems.append(f"{k} is not 64 lower-case hex digits")
    if m["sort_key"] != list(SORT_KEY):
        problems.append(f"sort_key {m['sort_key']} is not {list(SORT_KEY)}")
    for i, c in enumerate(m["columns"]):
        problems += _fields_problems(c, _COLUMN_FIELDS, f"columns[{i}]")
    return problems


def verify_product(manifest_path: Path) -> VerifyResult:
    """Check a product against its manifest, as a consumer would; every failed check is reported."""
    manifest_path = Path(manifest_path)
    failures: list[CheckFailure] = []
    passed: list[str] = []
    done: set[str] = set()

    def report(check: str, problems: Sequence[str] | str | None) -> bool:
        done.add(check)
        if isinstance(problems, str):
            problems = [problems]
        if problems:
            failures.append(CheckFailure(check, "; ".join(problems)))
            return False
        passed.append(check)
        return True

    def result(**kw) -> VerifyResult:
        skipped = tuple(c for c in CHECKS if c not in done)
        return VerifyResult(manifest_path, tuple(failures), tuple(passed), skipped, **kw)

    # --- the manifest itself
    try:
        m = json.loads(manifest_path.read_text(encoding="ascii"))
    except FileNotFoundError:
        report("manifest", f"no manifest file {manifest_path}")
        return result()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        report("manifest", f"cannot read {manifest_path} as JSON: {exc}")
        return result()
    if not report("manifest", _manifest_problems(m)):
        return result()
    cid, rev, n_declared = m["chunk_id"], m["revision"], m["row_count"]
    info = {"chunk_id": cid, "revision": rev, "row_count": n_declared}

    plain = "/" not in m["file"] and "\\" not in m["file"] and not m["file"].startswith(".")
    name_problems = []
    if manifest_path.name != manifest_name(cid, rev):
        name_problems.append(f"manifest is named {manifest_path.name!r}, not {manifest_name(cid, rev)!r}")
    if m["file"] != parquet_name(cid, rev):
        name_problems.append(f"file {m['file']!r} is not {parquet_name(cid, rev)!r}")
    report("name", name_problems)

    cs = float(m["chunk_seconds"])
    start, end = chunk_bounds(cid, cs) if cs > 0 else (math.nan, math.nan)
    bound_problems = []
    if not (math.isfinite(cs) and cs > 0):
        bound_problems.append(f"chunk_seconds {m['chunk_seconds']!r} is not positive")
    elif (float(m["chunk_start_obt"]), float(m["chunk_end_obt"])) != (start, end):
        bound_problems.append(
            f"chunk OBT [{m['chunk_start_obt']}, {m['chunk_end_obt']}) is not [{start}, {end}) of chunk {cid}"
        )
    margin = float(m["obt_margin_s"])
    if not (math.isfinite(margin) and margin >= 0):
        bound_problems.append(f"obt_margin_s {m['obt_margin_s']!r} is not >= 0")
    bounds_ok = report("chunk_bounds", bound_problems)

    want = parquet_name(cid, rev - 1) if rev > 1 else None
    sup = m["supersedes"]
    report("supersedes", None if sup == want else f"supersedes {sup!r}, expected {want!r}")

    # --- the file's bytes
    if not plain:
        report("file_present", f"file {m['file']!r} is not a plain file name beside the manifest")
        return result(**info)
    data_path = manifest_path.parent / m["file"]
    try:
        data = data_path.read_bytes()
    except FileNotFoundError:
        report("file_present", f"{data_path} is missing")
        return result(**info)
    except OSError as exc:
        report("file_present", f"cannot read {data_path}: {exc}")
        return result(**info)
    report("file_present", None)
    report(
        "size",
        None if len(data) == m["byte_count"] else
        f"{len(data)} bytes, manifest says {m['byte_count']}"
        + (" (truncated)" if len(data) < m["byte_count"] else ""),
    )  # fmt: skip
    sha = hashlib.sha256(data).hexdigest()
    report("sha256", None if sha == m["sha256"] else f"sha256 {sha}, manifest says {m['sha256']}")

    # --- Parquet structure
    try:
        pf = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
        table = pf.read()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... on damaged files
        report("parquet_readable", f"not a readable Parquet file: {type(exc).__name__}: {exc}")
        return result(**info)
    report("parquet_readable", None)
    report(
        "row_count",
        None if table.num_rows == n_declared else f"{table.num_rows} rows, manifest says {n_declared}",
    )

    declared = {c["name"]: c for c in m["columns"]}
    col_problems = []
    names_declared = [c["name"] for c in m["columns"]]
    if names_declared != list(COLUMNS):
        col_problems.append(f"manifest declares columns {names_declared}, {FORMAT} has {list(COLUMNS)}")
    for f in SCHEMA:
        c = declared.get(f.name)
        if c is not None and (c["type"], c["nullable"]) != (str(f.type), f.nullable):
            col_problems.append(
                f"manifest declares {f.name} {c['type']}{'' if c['nullable'] else ' not null'},"
                f" the format {f.type}{'' if f.nullable else ' not null'}"
            )
    if table.schema.names != names_declared:
        col_problems.append(f"file has columns {table.schema.names}, manifest declares {names_declared}")
    usable = {}  # columns of the file that are as declared: their values can be checked
    for f in table.schema:
        c = declared.get(f.name)
        if c is None:
            continue
        col = table.column(f.name)
        problems = []
        if str(f.type) != c["type"]:
            problems.append(f"{f.name} is {f.type} in the file, manifest declares {c['type']}")
        elif not c["nullable"] and (f.nullable or col.null_count):
            if col.null_count:
                problems.append(f"{f.name} is declared not null but has {col.null_count} NULLs")
            else:
                problems.append(f"{f.name} is nullable in the file, declared not null")
        col_problems += problems
        if not problems:
            usable[f.name] = col
    report("columns", col_problems)

    # --- content digests
    computed = {}
    for name, col in usable.items():
        values, valid = _arrow_column(col)
        computed[name] = column_digest(values, valid, declared[name]["nullable"])
    changed = [n for n in names_declared if n in computed and computed[n] != declared[n]["sha256"]]
    report("column_digests", f"content differs in column(s) {changed}" if changed else None)
    if len(computed) == len(names_declared) == len(declared):
        entries = [{**declared[n], "sha256": computed[n]} for n in names_declared]
        recomputed = content_digest(table.num_rows, entries)
        problems = []
        if recomputed != m["content_sha256"]:
            problems.append(f"row content digest {recomputed}, manifest says {m['content_sha256']}")
        if content_digest(n_declared, m["columns"]) != m["content_sha256"]:
            problems.append("content_sha256 disagrees with the manifest's own row count and column digests")
        report("content_digest", problems)

    # --- row semantics
    need = ("source_id", "obt", "chunk_id", "revision")
    if all(k in usable for k in need) and bounds_ok:
        vals = {k: _arrow_column(usable[k])[0] for k in need}
        row_problems = _row_problems(vals["source_id"], vals["obt"], vals["chunk_id"], vals["revision"],
                                     cid, rev, start - margin, end + margin)  # fmt: skip
        bad = dict(row_problems)
        for check in ("sorted_unique", "chunk_id", "revision", "obt_in_chunk"):
            report(check, bad.get(check))
    return result(**info)


# -------------------------------------------------------------------------------------------------- CLI


def main_verify(argv: Sequence[str] | None = None) -> int:
    """soc verify-product MANIFEST... | --outbox DIR [--latest]: one line per product; 1 if any failed."""
    p = argparse.ArgumentParser(
        prog="soc verify-product",
        description="Check chunk products (Parquet + manifest) as a consumer would (docs/products.md).",
    )
    p.add_argument("manifests", nargs="*", type=Path, metavar="MANIFEST", help="*.manifest.json files")
    p.add_argument("--outbox", type=Path, action="append", default=[], metavar="DIR",
                   help="check every complete product in DIR (may be repeated)")  # fmt: skip
    p.add_argument("--latest", action="store_true", help="with --outbox: only each chunk's current revision")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:  # -h, or a usage error (already printed)
        return int(exc.code or 0)
    if not args.manifests and not args.outbox:
        p.print_usage(sys.stderr)
        print("soc verify-product: error: give manifest files or --outbox DIR", file=sys.stderr)
        return 2
    paths = list(args.manifests)
    for outbox in args.outbox:
        if not outbox.is_dir():
            print(f"soc verify-product: error: {outbox} is not a directory", file=sys.stderr)
            return 2
        refs = list(latest_revisions(outbox).values()) if args.latest else list_products(outbox)
        if not refs:
            print(f"soc verify-product: no complete products in {outbox}", file=sys.stderr)
        paths += [r.manifest for r in refs]
        complete = {r.parquet.name for r in list_products(outbox)}
        for orphan in sorted(outbox.glob("chunk-*" + PARQUET_SUFFIX)):
            if orphan.name not in complete:
                print(f"soc verify-product: note: {orphan} has no manifest (incomplete, not checked)",
                      file=sys.stderr)  # fmt: skip
    failed = 0
    for path in paths:
        r = verify_product(path)
        failed += not r.ok
        print(r.line())
    return 1 if failed else 0


__all__ = [
    "CHECKS", "COLUMNS", "FORMAT", "OBT_MARGIN_S", "SCHEMA", "SORT_KEY", "CheckFailure", "ProductConflict",
    "ProductError", "ProductRef", "VerifyResult", "build_product", "chunk_bounds", "column_digest",
    "content_digest", "latest_revisions", "list_products", "main_verify", "manifest_name", "parquet_name",
    "table_digests", "verify_product", "write_product",
]  # fmt: skip
