"""Versioned schema migrations shipped in the package (`soc db init`, `soc db migrate`).

Migrations are the files pipeline/db/migrations/NNNN_name.sql, applied in order, each in its own
transaction, and recorded in schema_migrations with a checksum: a migration that changed after it was
applied is an error, not something to apply again. `init` also fixes the database's settings (chunk length,
HEALPix order of the partitions), which every later step reads from the database, not from the caller.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

MIGRATIONS_PACKAGE = "pipeline.db.migrations"
DEFAULT_SETTINGS = {"chunk_seconds": "1800", "healpix_order": "5"}


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    out = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    out.sort(key=lambda mg: mg.version)
    if [mg.version for mg in out] != list(range(1, len(out) + 1)):
        raise MigrationError(f"migration versions must run 1..N without gaps: {[mg.version for mg in out]}")
    return out


def applied(conn: psycopg.Connection) -> dict[int, str]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    return dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())


def migrate(dsn: str) -> list[Migration]:
    """Apply the migrations not yet applied; return them. Refuses when an applied one has changed."""
    done = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        have = applied(conn)
        for mg in available():
            if mg.version in have:
                if have[mg.version] != mg.checksum:
                    raise MigrationError(f"migration {mg.version:04d}_{mg.name} changed after it was applied")
                continue
            with conn.transaction():
                conn.execute(mg.sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (mg.version, mg.name, mg.checksum),
                )
            done.append(mg)
    return done


def init(dsn: str, settings: dict[str, str] | None = None) -> list[Migration]:
    """Create the schema and fix the settings. Running it again changes nothing; other settings fail."""
    wanted = {**DEFAULT_SETTINGS, **{k: str(v) for k, v in (settings or {}).items()}}
    done = migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        have = dict(conn.execute("SELECT key, value FROM soc_settings").fetchall())
        clash = {k: (have[k], v) for k, v in wanted.items() if k in have and have[k] != v}
        if clash:
            raise MigrationError(f"database already initialised with other settings: {clash}")
        for k, v in wanted.items():
            conn.execute("INSERT INTO soc_settings VALUES (%s, %s) ON CONFLICT DO NOTHING", (k, v))
    return done


def settings(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM soc_settings").fetchall())
