"""The Main Database: PostgreSQL schema, migrations, loading, and a throwaway server for tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import Row


def one_row(cur: psycopg.Cursor[Row]) -> Row:
    """The row of a query that always returns exactly one (an aggregate, SELECT now(), ...): fetchone()
    without the None it gives when there is no row, which such a query never has."""
    row = cur.fetchone()
    assert row is not None, "a query of one row returned none"
    return row
