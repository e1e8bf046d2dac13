"""The validation environment: a promoted clone of operations on a copy-on-write snapshot, writable and
independent of operations, recorded in the eLog."""

from __future__ import annotations

import json
import os
import secrets
import subprocess

import psycopg
import pytest

from tests.infra.conftest import connect, live_primary, superuser_query


@pytest.fixture(scope="module")
def clone_host(topology) -> str:
    return topology.groups["validation_hosts"][0]


def test_the_clone_is_a_promoted_server(topology, clone_host):
    assert superuser_query(topology, clone_host, "SELECT pg_is_in_recovery()") == [["f"]]


def test_the_clone_is_a_snapshot_of_the_standbys_volume(topology, clone_host):
    run = subprocess.run(["/usr/local/sbin/soc-clone", "status"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    status = json.loads(run.stdout)
    assert status["running"] and status["last"]["ok"] and status["last"]["source"]["standby"]
    show = subprocess.run(["btrfs", "subvolume", "show", status["clone"]], capture_output=True, text=True)
    parent = [line.split()[-1] for line in show.stdout.splitlines() if "Parent UUID" in line]
    assert parent and parent[0] != "-", "the clone is not a snapshot"


def test_the_clone_is_writable_and_independent(topology, clone_host):
    table = f"clone_probe_{secrets.token_hex(4)}"
    with connect(topology, clone_host, "soc_validation") as clone:
        clone.execute(f"CREATE TABLE {table} (x int)")
        clone.execute(f"INSERT INTO {table} VALUES (1)")
        assert clone.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
        try:
            primary = live_primary(topology)
            assert superuser_query(topology, primary, f"SELECT to_regclass('{table}') IS NULL") == [["t"]]
        finally:
            clone.execute(f"DROP TABLE {table}")


def test_the_clone_has_the_operational_schema(topology, clone_host):
    primary = live_primary(topology)
    query = "SELECT max(version) FROM schema_migrations"
    assert superuser_query(topology, clone_host, query) == superuser_query(topology, primary, query)


def test_clones_are_recorded_in_the_elog(topology):
    rows = superuser_query(
        topology, live_primary(topology), "SELECT ok, lsn IS NOT NULL, seconds FROM elog WHERE kind = 'clone'"
    )
    assert rows and any(ok == "t" and has_lsn == "t" and float(s) > 0 for ok, has_lsn, s in rows)


def test_the_validation_login_reads_operations_only_through_its_grants(topology):
    with connect(topology, live_primary(topology), "soc_validation") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM elog")


def test_the_clone_gets_operations_passwords_back(topology, clone_host):
    """A clone keeps the passwords of its snapshot; soc-clone sync-passwords (run by every provisioning,
    and by every take and reset) gives it operations' current ones."""
    stale = f"ALTER ROLE soc_validation PASSWORD 'stale-{secrets.token_hex(8)}'"
    superuser_query(topology, clone_host, stale)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(topology, clone_host, "soc_validation").close()
    run = subprocess.run(["/usr/local/sbin/soc-clone", "sync-passwords"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["passwords_synced"] == ["soc_validation"]
    with connect(topology, clone_host, "soc_validation") as clone:
        assert clone.execute("SELECT current_user").fetchone() == ("soc_validation",)
    again = subprocess.run(["/usr/local/sbin/soc-clone", "sync-passwords"], capture_output=True, text=True)
    assert json.loads(again.stdout)["passwords_synced"] == []


def test_the_standbys_wal_is_off_the_copy_on_write_volume(topology):
    """Snapshots commit the whole btrfs file system; the WAL flushes synchronous commits wait for must not
    queue behind them (docs/validation.md)."""
    for host in topology.groups["db_replica"]:
        wal_dir = topology.var(host, "db_replica_wal_directory")
        pg_wal = os.path.join(topology.var(host, "postgresql_data_directory"), "pg_wal")
        assert os.path.islink(pg_wal) and os.path.realpath(pg_wal) == wal_dir
        assert not wal_dir.startswith(topology.var(host, "cow_mount").rstrip("/") + "/")
