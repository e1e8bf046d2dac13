"""What `soc compare` compares: the tables found in the catalog, their natural keys, and the documented rules
for what differs between environments by design (docs/compare.md).

Every table of the schema (`public`, plain or partitioned; not views, not the leaves themselves) is compared
unless EXCLUDED_TABLES names it with its reason. Within a table:

- identity columns are never compared (their values are handed out per environment), nor is any column
  of a foreign key to an identity column: such a reference is compared through the referenced row's
  natural key instead (columns named `<fk column>.<natural key column>`), or dropped when the referenced
  table has none;
- EXCLUDED_COLUMNS names the other columns that differ by design (times of loading or of a human
  action), each with its reason;
- NORMALISED rewrites a column by an SQL expression before comparing (an automatic comment that quotes an
  identity);
- the key is KEYS[table] when given, else the primary key, else the first unique constraint of NOT NULL
  columns, provided none of its columns is dropped by the rules above. A table without one is an error:
  a new table must get a rule before it can pass a comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

SCHEMA = "public"

# table -> why it is not compared at all
EXCLUDED_TABLES: dict[str, str] = {
    "elog": "the environment's own logbook (clones, switchovers, failovers): differs by design",
    "ingest_log": "one row per intake attempt with its start and end times and an identity: when and how"
    " often a file was tried depends on the environment, not on the telemetry",
    "alert_runs": "one row per alerts run: an identity, start and end times, worker count and software"
    " version; which revisions a run took together depends on when it ran. What the runs found is"
    " compared in alert_run_chunks, alert_candidates and alert_transitions",
}

# table -> {column: why it is not compared}
EXCLUDED_COLUMNS: dict[str, dict[str, str]] = {
    "schema_migrations": {"applied_at": "when the migration was applied in this environment"},
    "alert_transitions": {"at": "when the change was made (a run's commit time or an operator's action)"},
    "alert_names": {"assigned_at": "the publication time"},
}

# table -> {column: SQL expression over the table's row `t`} compared instead of the column
NORMALISED: dict[str, dict[str, str]] = {
    "alert_transitions": {
        "comment": "regexp_replace(t.comment, '^raised by alerts run [0-9]+$', 'raised by alerts run N')",
    },
}

# table -> natural key (column names after the rules above: a resolved reference is `<fk>.<column>`)
KEYS: dict[str, tuple[str, ...]] = {
    # the candidate (its natural key) and the change; alert_status_flow is acyclic, so a candidate makes
    # each change at most once
    "alert_transitions": (
        "candidate_id.source_id",
        "candidate_id.detector",
        "candidate_id.t_trigger",
        "from_status",
        "to_status",
    ),
}

# How a difference is classified in the reports: the area of the pipeline a table belongs to, and what a
# difference there means for a release (docs/compare.md). A table of no area (a new one) is "other".
AREAS: dict[str, tuple[tuple[str, ...], str]] = {
    "setup": (("soc_settings", "schema_migrations"), "the deployments' settings or schema differ"),
    "intake": (("deliveries", "packet_ledger", "quarantine", "raw_packets"),
               "telemetry was accepted, de-duplicated or quarantined differently"),
    "chunking": (("chunks", "transit_chunks"), "chunks were reduced at other times, from other input"),
    "science": (("sources", "transits"), "the image parameters, positions or cross-match differ"),
    "health": (("health_events", "health_summary"), "payload health was judged differently"),
    "alerts": (("alert_candidates", "alert_transitions", "alert_names", "alert_run_chunks", "alert_statuses",
                "alert_status_flow"), "photometric alerts differ"),
    "products": (("manifests",), "the chunk products delivered to other centres differ"),
}  # fmt: skip


def area_of(table: str) -> str:
    """The area (AREAS) a table's differences are classified in."""
    return next((a for a, (tables, _) in AREAS.items() if table in tables), "other")


FLOAT_TYPES = ("real", "double precision")
TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date", "time without time zone")


class CompareError(RuntimeError, ValueError):
    """A comparison that cannot be made (also a ValueError: `soc` reports it as an error, exit status 2)."""


@dataclass(frozen=True)
class Column:
    """A compared column: its name in the report, its SQL (over the table's row `t` and the joins), type."""

    name: str
    expr: str
    type: str

    @property
    def is_float(self) -> bool:
        return self.type in FLOAT_TYPES


@dataclass
class TableSpec:
    """How one side's table is read for comparing: key and compared columns (SQL over `t` and joins)."""

    name: str
    partitioned: bool
    key: tuple[Column, ...]
    columns: tuple[Column, ...]  # not in the key, in the table's column order
    joins: tuple[str, ...] = ()  # LEFT JOINs resolving references to identities
    excluded: dict[str, str] = field(default_factory=dict)  # column -> reason
    # partitioned: the partitions directly under the table with their leaves (checksummed a few at a time)
    units: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def leaves(self) -> tuple[str, ...]:
        return tuple(leaf for _, leaves in self.units for leaf in leaves)

    @property
    def all_columns(self) -> tuple[Column, ...]:
        return self.key + self.columns

    def select(self, relation: str | None = None, where: sql.Composable | None = None) -> sql.Composed:
        """(SELECT key..., columns... FROM relation t [joins] [WHERE ...]): the table or one leaf, columns
        named c0, c1, ... (the row's text form, and so its digest, depends on the values only)."""
        cols = sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(sql.SQL(c.expr), sql.Identifier(f"c{i}"))
            for i, c in enumerate(self.all_columns)
        )
        q = sql.SQL("SELECT {} FROM {} t").format(cols, sql.Identifier(SCHEMA, relation or self.name))
        if self.joins:
            q = sql.SQL("{} {}").format(q, sql.SQL(" ".join(self.joins)))
        if where is not None:
            q = sql.SQL("{} WHERE {}").format(q, where)
        return sql.SQL("({})").format(q)

    def leaf_rows(self, partition: str) -> sql.Composed:
        """SELECT t.tableoid AS leaf, ROW(key..., columns...) AS r FROM partition t [joins]: the rows of a
        partition (a leaf or a group of them) with the leaf each is in (checksums.leaf_digests_query)."""
        cols = sql.SQL(", ").join(sql.SQL(c.expr) for c in self.all_columns)
        q = sql.SQL("SELECT t.tableoid AS leaf, ROW({}) AS r FROM {} t").format(
            cols, sql.Identifier(SCHEMA, partition)
        )
        return sql.SQL("{} {}").format(q, sql.SQL(" ".join(self.joins))) if self.joins else q


@dataclass
class Catalog:
    """One side's schema, read from the system catalogs."""

    kinds: dict[str, str]  # table -> 'r' | 'p'
    columns: dict[str, list[tuple[str, str, bool, str]]]  # table -> [(name, type, not null, identity)]
    constraints: dict[str, list[tuple[str, list[str], str | None, list[str]]]]  # (type, cols, ref, ref cols)

    def identity(self, table: str) -> set[str]:
        return {n for n, _, _, ident in self.columns.get(table, ()) if ident}


def read_catalog(conn: psycopg.Connection) -> Catalog:
    kinds: dict[str, str] = dict(
        conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class c WHERE c.relnamespace = %s::regnamespace"
            " AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
            (SCHEMA,),
        ).fetchall()
    )
    columns: dict[str, list] = {t: [] for t in kinds}
    for table, name, typ, notnull, ident in conn.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity <> ''"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum",
        (SCHEMA,),
    ):
        columns[table].append((name, typ, notnull, ident))
    constraints: dict[str, list] = {t: [] for t in kinds}
    for table, contype, cols, ref, refcols in conn.execute(
        "SELECT c.relname, k.contype,"
        "  ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u (n, o)"
        "        JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.o),"
        "  r.relname,"
        "  ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u (n, o)"
        "        JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.o)"
        " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
        " LEFT JOIN pg_class r ON r.oid = k.confrelid"
        " WHERE c.relnamespace = %s::regnamespace AND NOT c.relispartition AND k.contype IN ('p', 'u', 'f')"
        " ORDER BY c.relname, k.contype, k.conname",
        (SCHEMA,),
    ):
        constraints[table].append((contype, list(cols), ref, list(refcols)))
    return Catalog(kinds, columns, constraints)


def _plain_key(cat: Catalog, table: str, dropped: set[str]) -> list[str] | None:
    """The primary key, else the first unique constraint of NOT NULL columns, none of them dropped."""
    notnull = {n for n, _, nn, _ in cat.columns[table] if nn}
    cons = cat.constraints.get(table, ())
    for wanted in ("p", "u"):
        for contype, cols, _, _ in cons:
            if contype == wanted and not set(cols) & dropped and set(cols) <= notnull:
                return cols
    return None


def _natural_key_of_referenced(cat: Catalog, table: str) -> list[str] | None:
    """A referenced table's natural key (no identity column in it), or None."""
    if table in EXCLUDED_TABLES or table not in cat.columns:
        return None
    if table in KEYS and all("." not in k for k in KEYS[table]):
        return list(KEYS[table])
    return _plain_key(cat, table, cat.identity(table))


def table_spec(cat: Catalog, table: str) -> TableSpec:
    """How `table` is compared on this side (see the module docstring); CompareError without a key."""
    if table not in cat.kinds:
        raise CompareError(f"no table {table!r} in schema {SCHEMA}")
    types = {n: typ for n, typ, _, _ in cat.columns[table]}
    excluded = {n: "an identity: its values are handed out per environment" for n in cat.identity(table)}
    excluded.update({c: why for c, why in EXCLUDED_COLUMNS.get(table, {}).items() if c in types})
    resolved: dict[str, list[Column]] = {}
    joins: list[str] = []
    for contype, cols, ref, refcols in cat.constraints.get(table, ()):
        if contype != "f" or ref is None or not set(refcols) <= cat.identity(ref) or len(cols) != 1:
            continue
        (col,) = cols
        nat = _natural_key_of_referenced(cat, ref)
        if nat is None:
            excluded[col] = f"refers to {ref}.{refcols[0]}, an identity ({ref} is not compared)"
            continue
        alias = f"j{len(joins)}"
        ident = sql.Identifier
        join = sql.SQL("LEFT JOIN {} {} ON {} = t.{}").format(
            ident(SCHEMA, ref), ident(alias), ident(alias, refcols[0]), ident(col)
        )
        joins.append(join.as_string(None))
        ref_types = {n: typ for n, typ, _, _ in cat.columns[ref]}
        resolved[col] = [
            Column(f"{col}.{k}", sql.Identifier(alias, k).as_string(None), ref_types[k]) for k in nat
        ]
        excluded[col] = f"refers to {ref}.{refcols[0]}, an identity: compared as {', '.join(nat)} of {ref}"
    normalised = NORMALISED.get(table, {})
    columns: list[Column] = []
    for name, typ, _, _ in cat.columns[table]:
        if name in resolved:
            columns.extend(resolved[name])
        elif name not in excluded:
            expr = normalised.get(name) or sql.Identifier("t", name).as_string(None)
            columns.append(Column(name, expr, typ))
    key_names: list[str] | None
    if table in KEYS:
        key_names = list(KEYS[table])
    else:
        key_names = _plain_key(cat, table, set(excluded))
    by_name = {c.name: c for c in columns}
    if not key_names or any(k not in by_name for k in key_names):
        raise CompareError(
            f"table {table} has no natural key to compare it by (its keys use identity columns or"
            " excluded ones): give it one in KEYS or exclude it in EXCLUDED_TABLES"
            " (pipeline/compare/rules.py)"
        )
    key = tuple(by_name[k] for k in key_names)
    rest = tuple(c for c in columns if c.name not in key_names)
    return TableSpec(table, cat.kinds[table] == "p", key, rest, tuple(joins), excluded)


def compared_tables(cat: Catalog) -> list[str]:
    return sorted(t for t in cat.kinds if t not in EXCLUDED_TABLES)


def excluded_tables(cats: Mapping[str, Catalog]) -> dict[str, str]:
    present = set().union(*(c.kinds for c in cats.values()))
    return {t: why for t, why in EXCLUDED_TABLES.items() if t in present}
