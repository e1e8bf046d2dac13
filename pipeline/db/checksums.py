"""Table checksums: the cheap first comparison between two databases (row count + digest of all rows).

The digest of a set of rows is the sum, modulo 2^64, of a 64-bit hash of each row's text form (the first 16
hex digits of md5(row::text), read as a signed bigint). Three properties follow, all used by `soc compare`
(pipeline/compare/, docs/compare.md):

- it does not depend on row order, so the server neither sorts nor holds the rows (the earlier digest,
  md5(string_agg(... ORDER BY ...)), sorted every row and built one string of the whole table, which
  PostgreSQL caps at 1 GB);
- it is additive: the digest of a partitioned table is the sum of its leaves' digests, and of a table the
  sum of its segments', so a difference can be drilled down to the leaves (or hash buckets) that differ
  without computing anything twice;
- md5 is fully specified, so the digest does not depend on the server's version or platform (the built-in
  hashtext functions would be about twice as fast but are not promised stable).

Two different sets of rows (with a unique key) get the same digest with probability about 2^-64.

Text forms depend on a few session settings (float digits, DateStyle, TimeZone, bytea_output): two sessions
must use the same ones to get the same digests; TEXT_SETTINGS are the ones `soc compare` sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pipeline.db import one_row

# Tables whose content must not depend on arrival order or on the environment (operations vs validation).
COMPARED_TABLES = ("deliveries", "packet_ledger", "quarantine", "raw_packets")

MASK64 = (1 << 64) - 1
# Session settings that fix the text form of every value (extra_float_digits 1: the shortest exact form of
# a float, PostgreSQL's default since version 12).
TEXT_SETTINGS = {
    "extra_float_digits": "1",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "bytea_output": "hex",
}


def row_hash(*record: str) -> sql.Composed:
    """SQL: a signed 64-bit hash of a record's text form (a row alias `r`, or a record column `y`, `r`)."""
    return sql.SQL("('x' || left(md5({}::text), 16))::bit(64)::bigint").format(sql.Identifier(*record))


@dataclass(frozen=True)
class Digest:
    """Row count and the sum of the rows' hashes modulo 2^64; digests of disjoint sets add up."""

    rows: int = 0
    total: int = 0

    @classmethod
    def of(cls, rows, total) -> Digest:
        """From a query's count(*) and sum(hash) (a numeric, or its text; None for no rows)."""
        return cls(int(rows), int(total or 0) & MASK64)

    def __add__(self, other: Digest) -> Digest:
        return Digest(self.rows + other.rows, (self.total + other.total) & MASK64)

    @property
    def hex(self) -> str:
        return f"{self.total:016x}"


def digest_query(relation: sql.Composable) -> sql.Composed:
    """SQL of one row (count, sum of row hashes) over `relation`: a table name or a parenthesised query."""
    return sql.SQL("SELECT count(*), sum({}) FROM {} r").format(row_hash("r"), relation)


def leaf_digests_query(parts: Sequence[sql.Composable]) -> sql.Composed:
    """SQL of one row (leaf name, count, sum of row hashes) per non-empty leaf partition, in one statement.

    parts: queries `SELECT t.tableoid AS leaf, ROW(...) AS r FROM <partition> t`, one per partition (a
    leaf, or a partitioned group of leaves). Grouping by tableoid over a group of 64 leaves costs less than
    one aggregate per leaf (the planner expands a partitioned table's leaves faster than it plans 64
    subqueries), and empty leaves give no row. ROW(...)::text is the text form of the same record as a
    subquery's row, so the digests are those of digest_query over each leaf."""
    rows = sql.SQL(" UNION ALL ").join(parts)
    return sql.SQL(
        "SELECT c.relname, x.n, x.s FROM (SELECT y.leaf, count(*) AS n, sum({}) AS s FROM ({}) y"
        " GROUP BY y.leaf) x JOIN pg_class c ON c.oid = x.leaf"
    ).format(row_hash("y", "r"), rows)


def bucket_expr(alias: str, key_columns: Sequence[str], n_buckets: int) -> sql.Composed:
    """SQL: the hash bucket (0 .. n_buckets - 1, a power of two) of a row of `alias` by its key columns."""
    if n_buckets < 1 or n_buckets & (n_buckets - 1):
        raise ValueError(f"n_buckets must be a power of two, not {n_buckets}")
    key = sql.SQL(", ").join(sql.Identifier(alias, c) for c in key_columns)
    return sql.SQL("(('x' || left(md5(ROW({})::text), 8))::bit(32)::integer & {})").format(
        key, sql.Literal(n_buckets - 1)
    )


def bucket_digests_query(
    relation: sql.Composable, key_columns: Sequence[str], n_buckets: int
) -> sql.Composed:
    """SQL of one row (bucket, count, sum) per non-empty hash bucket of `relation`'s rows by key."""
    return sql.SQL("SELECT {} AS b, count(*), sum({}) FROM {} r GROUP BY 1").format(
        bucket_expr("r", key_columns, n_buckets), row_hash("r"), relation
    )


def table_digest(conn: psycopg.Connection, table: str) -> Digest:
    n, total = one_row(conn.execute(digest_query(sql.Identifier(table))))
    return Digest.of(n, total)


def table_checksum(conn: psycopg.Connection, table: str) -> tuple[int, str]:
    """(rows, digest of all rows): equal iff the contents are equal (see the module docstring).

    A partitioned table is read through its parent: with thousands of leaves the planning alone takes
    seconds (docs/main_database.md); pipeline.compare digests it leaf by leaf."""
    d = table_digest(conn, table)
    return d.rows, d.hex


def checksums(conn: psycopg.Connection, tables=COMPARED_TABLES) -> dict[str, tuple[int, str]]:
    return {t: table_checksum(conn, t) for t in tables}


def leaf_partitions(conn: psycopg.Connection, table: str, schema: str = "public") -> list[str]:
    """The leaf partitions of a partitioned table at any depth, by name; [] for a plain table.

    Read from pg_inherits, which takes no lock (pg_partition_tree would lock every leaf)."""
    return [leaf for _, leaves in partition_units(conn, table, schema) for leaf in leaves]


def partition_units(
    conn: psycopg.Connection, table: str, schema: str = "public"
) -> list[tuple[str, list[str]]]:
    """[(child, its leaves)] for each partition directly under a partitioned table, by name (a leaf child
    is its own one leaf; `transits_g000` holds `transits_p00000` ..); [] for a plain table. Lock-free."""
    rows = conn.execute(
        "WITH RECURSIVE tree (oid, unit) AS ("
        "  SELECT i.inhrelid, i.inhrelid FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent"
        "  WHERE p.relname = %s AND p.relnamespace = %s::regnamespace"
        "  UNION ALL SELECT i.inhrelid, tree.unit FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid)"
        " SELECT u.relname, c.relname FROM tree JOIN pg_class c ON c.oid = tree.oid"
        " JOIN pg_class u ON u.oid = tree.unit WHERE c.relkind = 'r' ORDER BY 1, 2",
        (table, schema),
    ).fetchall()
    units: dict[str, list[str]] = {}
    for unit, leaf in rows:
        units.setdefault(unit, []).append(leaf)
    return list(units.items())
