"""The comparison: catalogs, then digests per table (per leaf partition for the partitioned ones), then, only
where digests differ, rows keyed on the natural key (docs/compare.md).

Each side is read in ONE snapshot (exported by a transaction held open for the whole comparison and
imported by each short read transaction), so a database that is being written is compared as of one
moment, while every read transaction locks only the few leaves it reads and then ends (a single
transaction reading all 12,288 leaves of both tables would hold about 60,000 locks). The two sides are read
at the same time, one thread each.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.compare import DEFAULT_MAX_ROWS
from pipeline.compare.rules import (
    AREAS,
    SCHEMA,
    Catalog,
    CompareError,
    TableSpec,
    area_of,
    compared_tables,
    excluded_tables,
    read_catalog,
    table_spec,
)
from pipeline.db import one_row
from pipeline.db.checksums import (
    TEXT_SETTINGS,
    Digest,
    bucket_digests_query,
    bucket_expr,
    digest_query,
    leaf_digests_query,
    partition_units,
)

SIDES = ("ops", "val")
LEAF_BATCH = 64  # leaves digested per statement (one group of the order-5 layout: measured best)
SEGMENT_ROWS = 20_000  # a segment with more rows on either side is split into hash buckets before row diffs
MAX_BUCKETS = 1 << 14
CONNECT_TIMEOUT_S = 10
MANIFESTS = "manifests"  # the pseudo-table of the chunk products' manifests
MANIFEST_EXCLUDED = {"software_version": "the version of the software that wrote it: differs by design when"
                     " validation runs a candidate release"}  # fmt: skip


# ---------------------------------------------------------------------------------------------- results


@dataclass
class ValueDiff:
    column: str
    ops: str | None  # PostgreSQL's text form; None: NULL, or no such row on this side
    val: str | None


@dataclass
class RowDiff:
    kind: str  # "only_ops" (missing in validation) | "only_val" (missing in operations) | "changed"
    segment: str  # the leaf partition (or table) it is in
    key: dict[str, str | None]
    values: list[ValueDiff]  # changed: the differing columns; only_*: the row's columns


@dataclass
class SegmentResult:
    """A leaf partition (or a whole plain table) whose digests differ, and how it was drilled into."""

    name: str
    ops_rows: int | None  # None: no such segment on this side
    val_rows: int | None
    ops_digest: str | None
    val_digest: str | None
    row_diffed: bool = False
    buckets: int = 0  # hash buckets it was split into (0: rows compared whole)
    buckets_differing: int = 0


@dataclass
class TableResult:
    table: str
    partitioned: bool = False
    key: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # compared, besides the key
    excluded: dict[str, str] = field(default_factory=dict)  # column -> why not compared
    ops_rows: int | None = None  # None: no such table on this side
    val_rows: int | None = None
    ops_digest: str | None = None
    val_digest: str | None = None
    n_segments: int = 1  # leaf partitions digested (1 for a plain table)
    segments: list[SegmentResult] = field(default_factory=list)  # those whose digests differ
    only_ops: int = 0
    only_val: int = 0
    changed: int = 0
    changed_by_column: dict[str, int] = field(default_factory=dict)
    within_tolerance: int = 0  # rows that differ only within the float tolerance (not differences)
    rows: list[RowDiff] = field(default_factory=list)  # at most max_rows
    schema: list[str] = field(default_factory=list)  # schema differences (each counts as a difference)
    notes: list[str] = field(default_factory=list)

    @property
    def checksum_equal(self) -> bool | None:
        if self.ops_digest is None or self.val_digest is None:
            return None
        return (self.ops_rows, self.ops_digest) == (self.val_rows, self.val_digest)

    @property
    def differences(self) -> int:
        return self.only_ops + self.only_val + self.changed + len(self.schema)

    @property
    def segments_diffed(self) -> list[str]:
        return [s.name for s in self.segments if s.row_diffed]


@dataclass
class CompareResult:
    ops: str  # the DSNs without their passwords
    val: str
    started_utc: str
    max_rows: int
    float_tolerance: float
    consistent_snapshot: bool  # each side read in one snapshot
    tables: list[TableResult] = field(default_factory=list)
    excluded_tables: dict[str, str] = field(default_factory=dict)
    manifests: TableResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def all_tables(self) -> list[TableResult]:
        return self.tables + ([self.manifests] if self.manifests else [])

    @property
    def differences(self) -> int:
        return sum(t.differences for t in self.all_tables)

    @property
    def identical(self) -> bool:
        return self.differences == 0

    @property
    def exit_status(self) -> int:
        return 0 if self.identical else 1

    def by_area(self) -> dict[str, list[TableResult]]:
        """The tables that differ, classified by area (rules.AREAS), in the order of AREAS."""
        out: dict[str, list[TableResult]] = {}
        for t in self.all_tables:
            if t.differences:
                out.setdefault(area_of(t.table), []).append(t)
        order = [*AREAS, "other"]
        return dict(sorted(out.items(), key=lambda kv: order.index(kv[0])))

    def table(self, name: str) -> TableResult:
        for t in self.all_tables:
            if t.table == name:
                return t
        raise KeyError(name)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["identical"], d["differences"] = self.identical, self.differences
        d["by_area"] = {a: [t.table for t in ts] for a, ts in self.by_area().items()}
        for t, td in zip(self.all_tables, d["tables"] + ([d["manifests"]] if self.manifests else []),
                         strict=True):  # fmt: skip
            td["checksum_equal"], td["differences"] = t.checksum_equal, t.differences
            td["segments_diffed"] = t.segments_diffed
        return d

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------ sides


def shown_dsn(dsn: str) -> str:
    """A DSN without its password, for messages and reports."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparseable DSN)"
    params.pop("password", None)
    return make_conninfo("", **params)


def _one_line(exc: BaseException, dsn: str | None = None) -> str:
    """An error message on one line (and without the DSN's password, should libpq quote it)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    try:
        password = conninfo_to_dict(dsn).get("password") if dsn else None
    except psycopg.Error:
        password = None
    return text.replace(str(password), "***") if password else text


class Side:
    """One database: a reading connection, and a transaction holding the snapshot every read imports."""

    def __init__(self, label: str, dsn: str):
        self.label, self.shown = label, shown_dsn(dsn)
        self.conn = self.holder = None
        try:
            self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            self.holder = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            for name, value in TEXT_SETTINGS.items():
                self.conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            self.instance = self.conn.execute(
                "SELECT pg_postmaster_start_time(), current_database()"
            ).fetchone()
        except psycopg.Error as exc:
            self.close()
            raise CompareError(
                f"cannot connect to the {label} database ({self.shown}): {_one_line(exc, dsn)}"
            ) from None
        self.holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            (self.snapshot,) = one_row(self.holder.execute("SELECT pg_export_snapshot()"))
        except psycopg.Error:  # not possible here: each read transaction sees the database as it is then
            self.holder.execute("ROLLBACK")
            self.snapshot = None

    @contextmanager
    def reading(self):
        """A read-only transaction in the side's snapshot."""
        with self.conn.transaction():
            if self.snapshot:
                self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                self.conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.snapshot)))
            else:
                self.conn.execute("SET TRANSACTION READ ONLY")
            yield self.conn

    def close(self) -> None:
        for c in (self.conn, self.holder):
            if c is not None:
                c.close()


# ----------------------------------------------------------------------------------------- the schema


def _reconcile(name: str, specs: dict[str, TableSpec | None], units: dict[str, list], res: TableResult):
    """The spec both sides are read with: the common columns; schema differences go into res.schema."""
    have = {s: sp for s, sp in specs.items() if sp is not None}
    if len(have) < 2:
        (only,) = have
        res.schema.append(f"table only in {only}")
        return None
    ops, val = have["ops"], have["val"]
    res.excluded = {**val.excluded, **ops.excluded}
    if [c.name for c in ops.key] != [c.name for c in val.key]:
        res.schema.append(
            f"natural key differs: ops ({', '.join(c.name for c in ops.key)}),"
            f" val ({', '.join(c.name for c in val.key)}): rows not compared"
        )
        return None
    if [(c.name, c.type) for c in ops.key] != [(c.name, c.type) for c in val.key]:
        res.schema.append("key column types differ: rows not compared")
        return None
    vcols = {c.name: c for c in val.columns}
    ocols = {c.name: c for c in ops.columns}
    common = []
    for c in ops.columns:
        other = vcols.get(c.name)
        if other is None:
            res.schema.append(f"column {c.name} only in ops")
        elif other.type != c.type:
            res.schema.append(f"column {c.name} is {c.type} in ops, {other.type} in val: not compared")
        else:
            common.append(c)
    res.schema.extend(f"column {n} only in val" for n in vcols if n not in ocols)
    if ops.partitioned != val.partitioned:
        res.schema.append("partitioned in one environment only")
    spec = TableSpec(
        name, ops.partitioned and val.partitioned, ops.key, tuple(common), ops.joins, res.excluded
    )
    if spec.partitioned:
        if units["ops"] == units["val"]:
            spec.units = tuple((u, tuple(leaves)) for u, leaves in units["ops"])
        else:
            n = {s: sum(len(leaves) for _, leaves in units[s]) for s in SIDES}
            res.notes.append(
                f"the partitions differ ({n['ops']} leaves in ops, {n['val']} in val): compared as a whole"
            )
    res.partitioned = spec.partitioned
    res.key = [c.name for c in spec.key]
    res.columns = [c.name for c in spec.columns]
    return spec


def _specs(sides: dict[str, Side], cats: dict[str, Catalog], wanted: Sequence[str] | None):
    names = sorted(set().union(*(compared_tables(c) for c in cats.values())))
    excluded = excluded_tables(cats)
    if wanted:
        for t in wanted:
            if t in excluded:
                raise CompareError(f"table {t} is not compared: {excluded[t]}")
            if t not in names:
                raise CompareError(f"no table {t} in either database (tables: {', '.join(names)})")
        names = [t for t in names if t in wanted]
    plans = []
    for name in names:
        res = TableResult(name)
        per_side = {s: table_spec(cats[s], name) if name in cats[s].kinds else None for s in SIDES}
        units = {}
        for s in SIDES:
            with sides[s].reading() as conn:
                units[s] = partition_units(conn, name) if name in cats[s].kinds else []
        plans.append((res, per_side, _reconcile(name, per_side, units, res)))
    return plans, excluded


# --------------------------------------------------------------------------------------------- digests


SIZE_BATCH = 1024  # leaves whose file size is read per transaction (each takes a lock until it ends)


def _digest_steps(spec: TableSpec) -> int:
    """Progress steps of digest_table: the file sizes, then one per partition under the table."""
    return 1 + len(spec.units) if spec.units else 1


def nonempty_leaves(conn: psycopg.Connection, leaves: Sequence[str], schema: str = SCHEMA) -> set[str]:
    """The leaves whose file holds at least one page (pg_relation_size > 0). Each is locked (ACCESS SHARE)
    until the transaction ends: give a few at a time (SIZE_BATCH).

    A leaf of size 0 has no rows in any snapshot that reads it now: rows live in pages of the relation's
    current file, which grows when a page is added, before any row is written to it (a TRUNCATE makes a new
    empty file, but is not MVCC-safe: once committed, no snapshot sees the old rows either)."""
    rows = conn.execute(
        "SELECT relname FROM unnest(%s::text[]) relname"
        " WHERE pg_relation_size(format('%%I.%%I', %s::text, relname)::regclass) > 0",
        (list(leaves), schema),
    ).fetchall()
    return {n for (n,) in rows}


def _leaf_batches(spec: TableSpec, nonempty: set[str]) -> list[list[tuple[str, list[str]]]]:
    """What to digest, about LEAF_BATCH leaves per statement: [[(part, units it completes)]]. A partition
    under the table with mostly non-empty leaves is one part (grouping by leaf over it is cheaper than one
    subquery per leaf); otherwise each of its non-empty leaves is a part, and its empty ones are skipped."""
    parts: list[tuple[str, int, str]] = []  # (relation, leaves it covers, the unit it belongs to)
    for unit, leaves in spec.units:
        full = [leaf for leaf in leaves if leaf in nonempty]
        if 2 * len(full) > len(leaves):
            parts.append((unit, len(leaves), unit))
        else:
            parts += [(leaf, 1, unit) for leaf in full]
    batches: list[list[tuple[str, list[str]]]] = []
    n = LEAF_BATCH
    for i, (rel, weight, unit) in enumerate(parts):
        if n + weight > LEAF_BATCH:
            batches.append([])
            n = 0
        last = i + 1 == len(parts) or parts[i + 1][2] != unit
        batches[-1].append((rel, [unit] if last else []))
        n += weight
    return batches


def digest_table(
    side: Side, spec: TableSpec, on_step: Callable[[int], None] = lambda n: None
) -> dict[str, Digest]:
    """{segment: digest}: one per leaf partition (empty ones too), or {table: digest} for a plain table.

    Leaves whose file is empty (nonempty_leaves) are not read: a partitioned table of 12,288 leaves with
    data in a few hundred costs a few hundred leaves' reads, not 12,288."""
    if not spec.units:
        with side.reading() as conn:
            n, total = conn.execute(digest_query(spec.select())).fetchone()
        on_step(1)
        return {spec.name: Digest.of(n, total)}
    out = dict.fromkeys(spec.leaves, Digest())
    nonempty: set[str] = set()
    for i in range(0, len(spec.leaves), SIZE_BATCH):
        with side.reading() as conn:
            nonempty |= nonempty_leaves(conn, spec.leaves[i : i + SIZE_BATCH])
    batches = _leaf_batches(spec, nonempty)
    on_step(1 + len(spec.units) - sum(len(done) for b in batches for _, done in b))  # the skipped units
    for batch in batches:
        with side.reading() as conn:
            rows = conn.execute(leaf_digests_query([spec.leaf_rows(rel) for rel, _ in batch])).fetchall()
        out.update({leaf: Digest.of(n, total) for leaf, n, total in rows})
        on_step(sum(len(done) for _, done in batch))
    return out


def _total(digests: dict[str, Digest]) -> Digest:
    return sum(digests.values(), Digest())


# ------------------------------------------------------------------------------------------- row diffs


class _Rows:
    """Accumulates one table's row differences (exact counts; at most max_rows listed)."""

    def __init__(self, res: TableResult, key_names, col_names, floats, max_rows: int, tolerance: float):
        self.res, self.max_rows, self.tol = res, max_rows, tolerance
        self.key_names, self.col_names, self.floats = list(key_names), list(col_names), list(floats)

    @classmethod
    def of(cls, res: TableResult, spec: TableSpec, max_rows: int, tolerance: float) -> _Rows:
        cols = spec.columns
        return cls(res, [c.name for c in spec.key], [c.name for c in cols], [c.is_float for c in cols],
                   max_rows, tolerance)  # fmt: skip

    def _close(self, a: str, b: str) -> bool:
        try:
            x, y = float(a), float(b)
        except ValueError:
            return False
        return abs(x - y) <= self.tol * max(1.0, abs(x), abs(y))

    def _list(self, row: RowDiff) -> None:
        if len(self.res.rows) < self.max_rows:
            self.res.rows.append(row)

    def compare(self, segment: str, ops: dict, val: dict) -> None:
        """ops/val: {key texts: (sort key, column texts)} of one segment (or some of its buckets)."""
        res = self.res
        keys = sorted(ops.keys() | val.keys(), key=lambda k: (ops.get(k) or val[k])[0])
        for k in keys:
            a, b = ops.get(k), val.get(k)
            key = dict(zip(self.key_names, k, strict=True))
            if b is None or a is None:
                kind, vals = ("only_ops", ops[k][1]) if b is None else ("only_val", b[1])
                if kind == "only_ops":
                    res.only_ops += 1
                else:
                    res.only_val += 1
                pairs = [
                    (n, v, None) if b is None else (n, None, v)
                    for n, v in zip(self.col_names, vals, strict=True)
                ]
                self._list(RowDiff(kind, segment, key, [ValueDiff(*p) for p in pairs]))
                continue
            diffs, close = [], 0
            for name, x, y, is_float in zip(self.col_names, a[1], b[1], self.floats, strict=True):
                if x == y:
                    continue
                if is_float and self.tol > 0 and x is not None and y is not None and self._close(x, y):
                    close += 1
                    continue
                diffs.append(ValueDiff(name, x, y))
            if diffs:
                res.changed += 1
                for d in diffs:
                    res.changed_by_column[d.column] = res.changed_by_column.get(d.column, 0) + 1
                self._list(RowDiff("changed", segment, key, diffs))
            elif close:
                res.within_tolerance += 1


def _rows_query(spec: TableSpec, relation: str | None, bucket: sql.Composable | None = None) -> sql.Composed:
    """SELECT [bucket,] typed key columns, text of every column FROM the table or a leaf [in buckets %s]."""
    nk, n = len(spec.key), len(spec.all_columns)
    cols = [sql.Identifier(f"c{i}") for i in range(n)]
    fields = [*cols[:nk], *(sql.SQL("{}::text").format(c) for c in cols)]
    if bucket is not None:
        fields.insert(0, bucket)
    q = sql.SQL("SELECT {} FROM {} r").format(sql.SQL(", ").join(fields), spec.select(relation))
    if bucket is not None:
        q = sql.SQL("{} WHERE {} = ANY(%s) ORDER BY 1").format(q, bucket)
    return q


def _as_dict(spec: TableSpec, rows: Sequence[tuple], side: Side, where: str) -> dict:
    """{key texts: (typed key, column texts)}; CompareError when the key is not unique."""
    nk = len(spec.key)
    out = {tuple(r[nk : 2 * nk]): (tuple(r[:nk]), tuple(r[2 * nk :])) for r in rows}
    if len(out) != len(rows):
        raise CompareError(
            f"{spec.name}: the key ({', '.join(c.name for c in spec.key)}) is not unique in the {side.label}"
            f" database ({len(rows) - len(out)} duplicate(s) in {where})"
        )
    return out


def _fetch(side: Side, spec: TableSpec, relation: str | None) -> dict:
    """The rows of the table, or of one leaf, as _as_dict gives them."""
    with side.reading() as conn:
        rows = conn.execute(_rows_query(spec, relation)).fetchall()
    return _as_dict(spec, rows, side, relation or spec.name)


def _bucket_groups(conn, side: Side, spec: TableSpec, relation: str | None, bucket: sql.Composable, wanted):
    """(bucket, rows as _as_dict gives them) of the wanted buckets in bucket order, streamed from a
    server-side cursor: one pass over the segment (the server sorts the wanted rows), one bucket in memory."""
    cur = conn.cursor(name=f"soc_compare_{side.label}")
    cur.itersize = 10_000
    cur.execute(_rows_query(spec, relation, bucket), (list(wanted),))
    for b, group in itertools.groupby(cur, key=lambda r: r[0]):
        yield b, _as_dict(spec, [r[1:] for r in group], side, f"{relation or spec.name}, bucket {b}")


def _both(pool: ThreadPoolExecutor, sides: dict[str, Side], fn: Callable[[Side], object]) -> dict:
    futures = {s: pool.submit(fn, sides[s]) for s in SIDES}
    return {s: f.result() for s, f in futures.items()}


def _diff_segment(pool, sides, spec: TableSpec, seg: SegmentResult, rows: _Rows) -> None:
    """Rows of one segment whose digests differ: compared whole when it is small, else split into hash
    buckets by key whose digests are compared first, and only the differing buckets' rows read."""
    relation = seg.name if spec.leaves else None
    big = max(seg.ops_rows or 0, seg.val_rows or 0)
    # a segment missing on one side (a leaf only there) has no rows to read on that side
    present = [s for s in SIDES if getattr(seg, f"{s}_rows") is not None]
    seg.row_diffed = True
    if big <= SEGMENT_ROWS:
        got = _both(pool, sides, lambda side: _fetch(side, spec, relation) if side.label in present else {})
        rows.compare(seg.name, got["ops"], got["val"])
        return
    n_b = min(MAX_BUCKETS, 1 << (math.ceil(big / SEGMENT_ROWS) - 1).bit_length())
    key_cols = [f"c{i}" for i in range(len(spec.key))]
    q = bucket_digests_query(spec.select(relation), key_cols, n_b)

    def buckets(side: Side) -> dict[int, Digest]:
        if side.label not in present:
            return {}
        with side.reading() as conn:
            return {b: Digest.of(n, t) for b, n, t in conn.execute(q).fetchall()}

    bd = _both(pool, sides, buckets)
    differing = sorted(b for b in bd["ops"].keys() | bd["val"].keys() if bd["ops"].get(b) != bd["val"].get(b))
    seg.buckets, seg.buckets_differing = n_b, len(differing)
    bucket = bucket_expr("r", key_cols, n_b)
    with ExitStack() as stack:
        streams = {}
        for s in present:
            conn = stack.enter_context(sides[s].reading())
            streams[s] = _bucket_groups(conn, sides[s], spec, relation, bucket, differing)
        heads = {s: next(streams[s], None) for s in present}
        for b in differing:
            got = {"ops": {}, "val": {}}
            for s in present:
                head = heads[s]
                if head is not None and head[0] == b:
                    got[s] = head[1]
                    heads[s] = next(streams[s], None)
            rows.compare(seg.name, got["ops"], got["val"])


# ------------------------------------------------------------------------------------------- manifests


def _manifest_rows(outbox: Path) -> dict:
    """{(chunk_id, revision) texts: (sort key, {field: JSON text})} of the complete products in outbox."""
    from pipeline.distribute import list_products

    if not Path(outbox).is_dir():
        raise CompareError(f"{outbox}: no such directory (an outbox of chunk products)")
    out = {}
    for ref in list_products(Path(outbox)):
        try:
            m = json.loads(ref.manifest.read_text())
        except (OSError, ValueError) as exc:
            raise CompareError(f"{ref.manifest}: unreadable manifest: {_one_line(exc)}") from None
        flat = {}
        for k, v in m.items():
            if k == "columns" and isinstance(v, list):
                for col in v:
                    name = col.get("name", "?") if isinstance(col, dict) else "?"
                    for f, x in col.items() if isinstance(col, dict) else ():
                        if f != "name":
                            flat[f"columns.{name}.{f}"] = json.dumps(x, sort_keys=True)
            elif k not in MANIFEST_EXCLUDED:
                flat[k] = json.dumps(v, sort_keys=True)
        out[(str(ref.chunk_id), str(ref.revision))] = ((ref.chunk_id, ref.revision), flat)
    return out


def compare_manifests(ops_outbox: Path, val_outbox: Path, max_rows: int) -> TableResult:
    """The chunk products' manifests of two outboxes, keyed on (chunk_id, revision), every field but
    MANIFEST_EXCLUDED (the per-column entries as columns.<name>.<field>)."""
    got = {"ops": _manifest_rows(ops_outbox), "val": _manifest_rows(val_outbox)}
    fields = sorted({f for rows in got.values() for _, flat in rows.values() for f in flat})
    res = TableResult(
        MANIFESTS, key=["chunk_id", "revision"], columns=fields, excluded=dict(MANIFEST_EXCLUDED)
    )
    res.ops_rows, res.val_rows = len(got["ops"]), len(got["val"])
    res.n_segments = 1
    rows = _Rows(res, res.key, fields, [False] * len(fields), max_rows, 0.0)
    as_rows = {
        s: {k: (sk, tuple(flat.get(f) for f in fields)) for k, (sk, flat) in got[s].items()} for s in SIDES
    }
    rows.compare("outbox", as_rows["ops"], as_rows["val"])
    res.notes.append(f"ops outbox {ops_outbox}, val outbox {val_outbox}")
    return res


# ------------------------------------------------------------------------------------------ comparison


def compare(
    ops_dsn: str,
    val_dsn: str,
    *,
    tables: Sequence[str] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    float_tolerance: float = 0.0,
    manifests: tuple[Path, Path] | None = None,
    progress: bool = False,
) -> CompareResult:
    """Compare two Main Databases (operations, validation); see docs/compare.md. Raises CompareError when
    the comparison cannot be made (a database unreachable, an unknown table, a table without a key)."""
    from pipeline.progress import progress_bar

    if max_rows < 0:
        raise CompareError(f"max_rows must be >= 0, not {max_rows}")
    if not (float_tolerance >= 0 and math.isfinite(float_tolerance)):
        raise CompareError(f"the float tolerance must be a finite number >= 0, not {float_tolerance}")
    t0 = time.perf_counter()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    sides: dict[str, Side] = {}
    try:
        for label, dsn in zip(SIDES, (ops_dsn, val_dsn), strict=True):
            sides[label] = Side(label, dsn)
        if sides["ops"].instance == sides["val"].instance:
            raise CompareError(f"both DSNs name the same database ({sides['ops'].shown}): nothing to compare")
        result = CompareResult(
            sides["ops"].shown, sides["val"].shown, started, max_rows, float_tolerance,
            consistent_snapshot=all(s.snapshot for s in sides.values()),
        )  # fmt: skip
        with ThreadPoolExecutor(len(SIDES)) as pool:
            cats = _both(pool, sides, lambda side: _read_catalog(side))
            plans, result.excluded_tables = _specs(sides, cats, tables)
            result.seconds["catalog"] = time.perf_counter() - t0
            with progress_bar(progress) as bar:
                _digest_all(pool, sides, plans, bar)
                result.seconds["checksums"] = time.perf_counter() - t0 - result.seconds["catalog"]
                t1 = time.perf_counter()
                _drill(pool, sides, plans, bar, max_rows, float_tolerance)
                result.seconds["rows"] = time.perf_counter() - t1
        result.tables = [res for res, _, _ in plans]
        if manifests is not None:
            result.manifests = compare_manifests(Path(manifests[0]), Path(manifests[1]), max_rows)
        result.seconds["total"] = time.perf_counter() - t0
        return result
    except psycopg.Error as exc:
        raise CompareError(f"comparison failed: {_one_line(exc)}") from None
    finally:
        for s in sides.values():
            s.close()


def _read_catalog(side: Side) -> Catalog:
    with side.reading() as conn:
        return read_catalog(conn)


def _digest_all(pool, sides, plans, bar) -> None:
    """Digests of every table on both sides (each side in its own thread) into the plans' results."""
    steps = sum(_digest_steps(spec) for _, _, spec in plans if spec is not None)
    tasks = {
        s: bar.add_task(
            f"checksums {s}", total=steps + sum(1 for _, per, sp in plans if sp is None and per[s])
        )
        for s in SIDES
    }

    def run(side: Side) -> dict:
        out = {}
        for res, per_side, spec in plans:
            step = lambda n: bar.update(tasks[side.label], advance=n)  # noqa: E731
            if spec is not None:
                out[res.table] = digest_table(side, spec, step)
            elif per_side[side.label] is not None:  # only this side has it (or keys differ): its row count
                out[res.table] = digest_table(side, per_side[side.label], step)
        return out

    got = _both(pool, sides, run)
    for res, _, spec in plans:
        for s in SIDES:
            if res.table in got[s]:
                d = _total(got[s][res.table])
                setattr(res, f"{s}_rows", d.rows)
                setattr(res, f"{s}_digest", d.hex)
        if spec is None:
            continue
        res.n_segments = len(spec.leaves) or 1
        ops, val = got["ops"][res.table], got["val"][res.table]
        for name in sorted(ops.keys() | val.keys()):
            a, b = ops.get(name), val.get(name)
            if a != b:
                res.segments.append(SegmentResult(
                    name, a and a.rows, b and b.rows, a and a.hex, b and b.hex,
                ))  # fmt: skip


def _drill(pool, sides, plans, bar, max_rows: int, tolerance: float) -> None:
    todo = [(res, spec) for res, _, spec in plans if spec is not None and res.segments]
    task = bar.add_task("row differences", total=sum(len(res.segments) for res, _ in todo))
    for res, spec in todo:
        rows = _Rows.of(res, spec, max_rows, tolerance)
        for seg in res.segments:
            bar.update(task, description=f"rows of {seg.name}")
            _diff_segment(pool, sides, spec, seg, rows)
            bar.update(task, advance=1)
