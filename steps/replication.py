"""Step definitions of features/replication.feature: the synchronous standby, the failover drill (the
primary's postmaster killed while the watcher writes) and the planned switchover. Imported by
steps/conftest.py. The run that no failure interrupted, which operations must match after the failover, is
validation's: a clone of operations taken before, fed the same deliveries by the landing tee."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import psycopg
from pytest_bdd import given, parsers, then, when

from tests.infra.conftest import live_primary, playbook_failure, run_playbook, superuser_query


def _standby(harness) -> str:
    primary = live_primary(harness.topology)
    return next(h for h in harness.topology.groups["db_servers"] if h != primary)


def _sync_standbys(harness, primary: str) -> list[list[str]]:
    return superuser_query(
        harness.topology, primary, "SELECT application_name, sync_state FROM pg_stat_replication"
    )


def _app_name(host: str) -> str:
    return host.replace("-", "_")


# ------------------------------------------------------------------------------------------ the standby
@then("the primary streams to the standby, which is synchronous")
def standby_synchronous(harness):
    primary = live_primary(harness.topology)
    assert _sync_standbys(harness, primary) == [[_app_name(_standby(harness)), "sync"]]


@then("a row committed on the primary is visible on the standby as soon as the commit returns")
def committed_visible(harness):
    """synchronous_commit = remote_apply for this one transaction: the commit returns once the standby has
    applied it, so a read there right after sees it (the pipeline's reads go to the standby)."""
    topo, primary, standby = harness.topology, live_primary(harness.topology), _standby(harness)
    mark = str(uuid.uuid4())
    superuser_query(
        topo,
        primary,
        "BEGIN; SET LOCAL synchronous_commit = remote_apply; INSERT INTO soc_settings"
        f" VALUES ('acceptance_replication_check', '{mark}'); COMMIT",
    )
    try:
        seen = superuser_query(
            topo, standby, "SELECT value FROM soc_settings WHERE key = 'acceptance_replication_check'"
        )
    finally:
        superuser_query(topo, primary, "DELETE FROM soc_settings WHERE key = 'acceptance_replication_check'")
    assert seen == [[mark]], seen


@then("operations reads from the standby and writes to the primary")
def reads_from_standby(harness):
    ops = harness.env["operations"]
    for dsn, host in ((ops.read_dsn, _standby(harness)), (ops.write_dsn, live_primary(harness.topology))):
        assert f"host={harness.topology.address(host)} " in dsn, (dsn, host)
    with psycopg.connect(ops.read_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True


# ------------------------------------------------------------------------------------------- failover
@given("validation runs on a clone of operations, fed the same deliveries by the landing tee")
def validation_cloned(harness, request):
    """The clone the session took last (a feature run alone takes one): from then on validation processes
    every delivery operations does, without failure."""
    if harness.clone is None:
        request.getfixturevalue("session_clone")
    assert harness.clone.summary["verify"]["ok"], harness.clone.summary


@given("a day and a half of telemetry with every delivery fault")
def drill_set(telemetry, ctx):
    ctx.set = telemetry("failover drill")


@when("the primary's postmaster is killed")
def kill_primary(harness, ctx):
    ctx.old_primary = live_primary(harness.topology)
    data_dir = harness.topology.var(ctx.old_primary, "postgresql_data_directory")
    postmaster = int(Path(data_dir, "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGKILL)
    standby = next(h for h in harness.topology.groups["db_servers"] if h != ctx.old_primary)
    ctx.before_kill = int(
        superuser_query(
            harness.topology,
            standby,
            f"SELECT count(*) FROM deliveries WHERE file_name = ANY(ARRAY{ctx.names!r})",
        )[0][0]
    )


@when(parsers.parse("failover.yml is run, within {seconds:d} seconds"))
def failover_run(seconds):
    t0 = time.monotonic()
    run = run_playbook("failover.yml", timeout=float(seconds))
    assert run.returncode == 0, playbook_failure(run)
    print(f"failover.yml: {time.monotonic() - t0:.0f} s")


@then("the standby is the primary now, and the old primary its synchronous standby")
def failed_over(harness, ctx):
    new = live_primary(harness.topology)
    assert new != ctx.old_primary
    assert superuser_query(harness.topology, ctx.old_primary, "SELECT pg_is_in_recovery()") == [["t"]]
    assert _sync_standbys(harness, new) == [[_app_name(ctx.old_primary), "sync"]]


@then("operations writes to the new primary")
def writes_to_new_primary(harness):
    dsn = harness.env["operations"].write_dsn
    assert f"host={harness.topology.address(live_primary(harness.topology))} " in dsn, dsn


@then(
    "operations holds what validation holds, which no failure interrupted: every packet, chunk and transit,"
    " none missing, none twice"
)
def same_as_validation(harness, ctx):
    """soc compare of the two Main Databases (and the chunk products made since the clone): every table,
    so the intake, the chunk revisions, the transits and the sources, health and alerts."""
    from steps.environments import describe

    harness.wait_quiet(300)
    result = harness.compare("failover drill")
    assert result.identical, describe(result)
    n = sum(len(v) for v in harness.env["operations"].query(
        "SELECT 1 FROM packet_ledger WHERE file_name = ANY(%s)", (ctx.names,)))  # fmt: skip
    assert n, "the set's deliveries are not in operations' ledger"
    print(
        f"drill: {ctx.before_kill} of {len(ctx.names)} deliveries in before the kill; operations and"
        f" validation identical ({result.table('transits').ops_rows} transits, {n} ledger rows of the set)"
    )


# ------------------------------------------------------------------------------------------ switchover
@given("the servers' roles of the moment")
def roles_now(harness, ctx):
    ctx.primary_before = live_primary(harness.topology)
    ctx.switched_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


@when(parsers.parse("switchover.yml makes the inventory's primary the primary, within {seconds:d} seconds"))
def switch_to_inventory_primary(harness, ctx, seconds):
    """One switchover when the standby is the inventory's primary (after a failover); else over and back."""
    wanted = harness.topology.groups["db_primary"][0]
    runs = 1 if live_primary(harness.topology) != wanted else 2
    deadline = time.monotonic() + seconds
    for _ in range(runs):
        before = live_primary(harness.topology)
        run = run_playbook("switchover.yml", timeout=max(1.0, deadline - time.monotonic()))
        assert run.returncode == 0, playbook_failure(run)
        assert live_primary(harness.topology) != before, "switchover.yml ran, the primary did not change"


@then("the inventory's primary is the primary, and its standby is synchronous")
def inventory_primary(harness):
    primary = harness.topology.groups["db_primary"][0]
    assert live_primary(harness.topology) == primary
    assert _sync_standbys(harness, primary) == [[_app_name(_standby(harness)), "sync"]]


@then("the switchover is in the eLog")
def switchover_logged(harness, ctx):
    rows = harness.primary_query(
        f"SELECT subject FROM elog WHERE kind = 'switchover' AND logged_at >= '{ctx.switched_at}+00'"
    )
    assert rows, f"no switchover in the eLog since {ctx.switched_at}"
