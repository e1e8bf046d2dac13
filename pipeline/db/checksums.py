"""Table checksums: the cheap first comparison between two databases (row count + digest of all rows)."""

from __future__ import annotations

import psycopg
from psycopg import sql

# Tables whose content must not depend on arrival order or on the environment (operations vs validation).
COMPARED_TABLES = ("deliveries", "packet_ledger", "quarantine", "raw_packets")


def table_checksum(conn: psycopg.Connection, table: str) -> tuple[int, str]:
    """(rows, md5 of the rows' text forms in sorted order): equal iff the contents are equal."""
    q = sql.SQL("SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {} t")
    n, digest = conn.execute(q.format(sql.Identifier(table))).fetchone()
    return int(n), digest


def checksums(conn: psycopg.Connection, tables=COMPARED_TABLES) -> dict[str, tuple[int, str]]:
    return {t: table_checksum(conn, t) for t in tables}
