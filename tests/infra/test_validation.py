"""The validation environment: a promoted clone of operations on a copy-on-write snapshot, writable and
independent of operations, recorded in the eLog."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time

import psycopg
import pytest

from tests.infra.conftest import connect, live_primary, superuser_query


@pytest.fixture(scope="module")
def clone_host(topology) -> str:
    return topology.groups["validation_hosts"][0]


def clone_status() -> dict:
    run = subprocess.run(["/usr/local/sbin/soc-clone", "status"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_the_clone_is_a_promoted_server(topology, clone_host):
    assert superuser_query(topology, clone_host, "SELECT pg_is_in_recovery()") == [["f"]]


def test_the_clone_is_a_snapshot_of_the_standbys_volume(topology, clone_host):
    status = clone_status()
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


def group_nice(pid: int) -> int | None:
    """The nice of the autogroup of process pid (None: no autogroups in this kernel)."""
    try:
        with open(f"/proc/{pid}/autogroup") as fh:
            return int(fh.read().split("nice")[1])
    except FileNotFoundError:
        return None


def test_a_take_runs_below_operations_then_the_clone_as_any_server(topology, clone_host):
    """Operations first on a shared host: while a take lasts, the clone's server (its WAL replay, the
    verification) runs at nice 19, and so does its session's group, where the kernel schedules by
    autogroups (pg_ctl starts the server in a session of its own, whose group would otherwise get a full
    share of the CPU); once the clone is ready it serves validation at the priority of any server."""
    data = superuser_query(topology, clone_host, "SHOW data_directory")[0][0]
    pidfile = os.path.join(data, "postmaster.pid")
    with open(pidfile) as fh:
        previous = int(fh.readline())
    take = subprocess.Popen(["/usr/local/sbin/soc-clone", "take"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen, postmaster = set(), None
    while take.poll() is None:
        try:
            with open(pidfile) as fh:
                postmaster = int(fh.readline())
            if postmaster != previous:
                seen.add((os.getpriority(os.PRIO_PROCESS, postmaster), group_nice(postmaster)))
        except (OSError, ValueError):  # between the servers, or a pid file half written
            pass
        time.sleep(0.005)
    out, err = take.communicate()
    assert take.returncode == 0, err or out
    has_groups = group_nice(postmaster) is not None
    assert (19, 19 if has_groups else None) in seen, f"never at nice 19 during the take: {seen}"
    assert os.getpriority(os.PRIO_PROCESS, postmaster) == 0
    assert group_nice(postmaster) == (0 if has_groups else None)


def lsn_segment(lsn: str, segment_bytes: int) -> int:
    high, low = (int(part, 16) for part in lsn.split("/"))
    return ((high << 32) | low) // segment_bytes


def test_a_clone_copies_only_the_wal_it_replays(topology, clone_host):
    """The standby's WAL directory also holds recycled segments (old WAL under future names, up to
    max_wal_size): the clone's copy runs from its redo point to the segment the standby had flushed
    when it was taken, never beyond."""
    status = clone_status()
    source = status["last"]["source"]
    standby = topology.groups["db_replica"][0]
    segment_bytes = int(superuser_query(topology, standby, "SELECT setting FROM pg_settings "
                                        "WHERE name = 'wal_segment_size'")[0][0])  # fmt: skip
    data = superuser_query(topology, clone_host, "SHOW data_directory")[0][0]
    base_wal = os.path.join(status["base"], os.path.relpath(data, status["clone"]), "pg_wal")
    segments = [int(n[8:16], 16) * (0x100000000 // segment_bytes) + int(n[16:], 16)
                for n in os.listdir(base_wal) if re.fullmatch(r"[0-9A-F]{24}", n)]  # fmt: skip
    assert segments, "the clone's snapshot has no WAL of its own"
    assert min(segments) == lsn_segment(source["redo_lsn"], segment_bytes)
    assert lsn_segment(source["replay_lsn"], segment_bytes) <= max(segments)
    assert max(segments) <= lsn_segment(source["wal_end_lsn"], segment_bytes)
    files = [os.path.join(base_wal, n) for n in os.listdir(base_wal)]
    assert source["wal_copied_bytes"] == sum(os.path.getsize(f) for f in files if os.path.isfile(f))


def test_a_reset_brings_back_the_clone_of_the_last_take(topology, clone_host):
    """soc-clone reset (clone.yml -e clone_action=reset): the clone as the last take left it, for a second
    validation run on the same data; what was written in it since is gone."""
    taken = clone_status()["last"]
    table = f"reset_probe_{secrets.token_hex(4)}"
    with connect(topology, clone_host, "soc_validation") as clone:
        clone.execute(f"CREATE TABLE {table} (x int)")
    run = subprocess.run(["/usr/local/sbin/soc-clone", "reset"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr or run.stdout
    reset = json.loads(run.stdout)
    assert reset["ok"] and reset["action"] == "reset"
    assert reset["source"] == taken["source"]
    assert superuser_query(
        topology, clone_host, f"SELECT count(*) FROM pg_class WHERE relname = '{table}'"
    ) == [["0"]]
    assert superuser_query(topology, clone_host, "SELECT pg_is_in_recovery()") == [["f"]]
