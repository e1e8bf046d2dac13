"""Versioned schema migrations shipped in the package (`soc db init`, `soc db migrate`).

Migrations are the files pipeline/db/migrations/NNNN_name.sql, applied in order, each in its own
transaction (unless marked `-- soc:no-transaction`, see Migration.transactional), and recorded in
schema_migrations with a checksum: a migration that changed after it was applied is an error, not something
to apply again. The one exception is a rewrite that gives the same schema (faster, say): the text it
replaces is kept as pipeline/db/migrations/superseded/NNNN_name.sql, a database that applied that text is up
to date, and a test proves that both texts give the same catalogue. `init` also fixes the database's
settings (chunk length, HEALPix order of the partitions), which every later step reads from the database,
not from the caller.

`init` stores the settings first (creating soc_settings if needed) and then applies the migrations, because
migrations read them: 0002 creates one partition per HEALPix pixel at soc_settings.healpix_order. `migrate`
alone therefore refuses a database that has no settings yet. Both take an advisory lock, so two of them
running at once apply each migration once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import psycopg

from pipeline.db import one_row

MIGRATIONS_PACKAGE = "pipeline.db.migrations"
DEFAULT_SETTINGS = {"chunk_seconds": "1800", "healpix_order": "5"}
REQUIRED_SETTINGS = tuple(DEFAULT_SETTINGS)
_LOCK = "SELECT pg_advisory_lock(hashtext('soc-migrate'))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext('soc-migrate'))"
_SETTINGS_TABLE = "CREATE TABLE IF NOT EXISTS soc_settings (key text PRIMARY KEY, value text NOT NULL)"


class MigrationError(RuntimeError, ValueError):
    """A refusal meant for the operator (also a ValueError, which `soc` reports as an error message)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    superseded: str | None = None  # the earlier text of this migration, which gives the same schema

    @property
    def transactional(self) -> bool:
        """False for a migration marked `-- soc:no-transaction` (e.g. one that creates thousands of
        partitions, more than one transaction can lock): it runs outside a transaction block, must be a
        single statement (a DO block may COMMIT) and must be safe to run again after a failure."""
        return re.search(r"^-- soc:no-transaction\b", self.sql, re.MULTILINE) is None

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def accepted_checksums(self) -> set[str]:
        """The checksums a database that applied this migration may have recorded."""
        return {hashlib.sha256(t.encode()).hexdigest() for t in (self.sql, self.superseded) if t is not None}


def _texts(folder) -> dict[tuple[int, str], str]:
    """(version, name) -> text of the files NNNN_name.sql in FOLDER (none if there is no FOLDER)."""
    out: dict[tuple[int, str], str] = {}
    for entry in folder.iterdir() if folder.is_dir() else ():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            out[int(m.group(1)), m.group(2)] = entry.read_text()
    return out


def available() -> list[Migration]:
    folder = resources.files(MIGRATIONS_PACKAGE)
    earlier = _texts(folder / "superseded")
    out = sorted(
        (Migration(v, name, sql, earlier.get((v, name))) for (v, name), sql in _texts(folder).items()),
        key=lambda mg: mg.version,
    )
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
    """Apply the migrations not yet applied; return them. Refuses when an applied one has changed, and
    on a database without settings (run `soc db init` first)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_LOCK)
        try:
            missing = _missing_settings(conn)
            if missing:
                raise MigrationError(
                    f"database has no settings ({', '.join(missing)} missing): run `soc db init` first"
                )
            return _apply(conn)
        finally:
            conn.execute(_UNLOCK)


def init(dsn: str, settings: Mapping[str, str | int | float] | None = None) -> list[Migration]:
    """Fix the settings, then create the schema. Running it again changes nothing; other settings fail."""
    wanted = {**DEFAULT_SETTINGS, **{k: str(v) for k, v in (settings or {}).items()}}
    _check_settings(wanted)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_LOCK)
        try:
            with conn.transaction():
                conn.execute(_SETTINGS_TABLE)
                have: dict[str, str] = dict(conn.execute("SELECT key, value FROM soc_settings").fetchall())
                clash = {k: (have[k], v) for k, v in wanted.items() if k in have and have[k] != v}
                if clash:
                    raise MigrationError(
                        "database already initialised with other settings (have, wanted): "
                        + ", ".join(f"{k} {a!r} != {b!r}" for k, (a, b) in sorted(clash.items()))
                    )
                for k, v in wanted.items():
                    conn.execute("INSERT INTO soc_settings VALUES (%s, %s) ON CONFLICT DO NOTHING", (k, v))
            return _apply(conn)
        finally:
            conn.execute(_UNLOCK)


def _record(conn: psycopg.Connection, mg: Migration) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
        (mg.version, mg.name, mg.checksum),
    )


def _check_settings(wanted: dict[str, str]) -> None:
    try:
        order, chunk_s = int(wanted["healpix_order"]), int(wanted["chunk_seconds"])
    except ValueError as exc:
        raise MigrationError(f"settings must be integers: {exc}") from None
    if not 0 <= order <= 12:  # source ids carry their level-12 pixel
        raise MigrationError(f"healpix_order must be within 0..12, not {order}")
    if chunk_s <= 0:
        raise MigrationError(f"chunk_seconds must be > 0, not {chunk_s}")


def _missing_settings(conn: psycopg.Connection) -> list[str]:
    if one_row(conn.execute("SELECT to_regclass('soc_settings')"))[0] is None:
        return list(REQUIRED_SETTINGS)
    have = {k for (k,) in conn.execute("SELECT key FROM soc_settings")}
    return [k for k in REQUIRED_SETTINGS if k not in have]


def _apply(conn: psycopg.Connection) -> list[Migration]:
    done = []
    have = applied(conn)
    for mg in available():
        if mg.version in have:
            if have[mg.version] not in mg.accepted_checksums:
                raise MigrationError(f"migration {mg.version:04d}_{mg.name} changed after it was applied")
            continue
        if mg.transactional:
            with conn.transaction():
                conn.execute(mg.sql)
                _record(conn, mg)
        else:  # one statement that commits as it goes and finishes the job when run again
            conn.execute(mg.sql)
            _record(conn, mg)
        done.append(mg)
    return done


def settings(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM soc_settings").fetchall())
