"""The failover drill (runs last: it changes which server is the primary, then switches back).

A simulated day with every delivery fault is delivered to operations; while the watcher ingests it the
primary is killed (SIGKILL of its postmaster), `failover.yml` promotes the synchronous standby and rejoins
the old primary, and the watcher carries on against the new primary. When every delivery is in and every
chunk reduced, the day's packet ledger and transits must be exactly those of a clean run of the same files
into a throwaway database (whose own accuracy against the simulator's truth the unit tests establish): no
transit lost, none duplicated. `switchover.yml` then restores the inventory's primary.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest

from pipeline.chunks import reduce_due, reduce_due_parallel
from pipeline.config import load
from pipeline.db import migrate
from pipeline.db.server import THROWAWAY_SETTINGS, LocalServer
from pipeline.intake import ingest_file, pending_files
from pipeline.landing import deliver
from pipeline.reduction import make_reducer
from pipeline.replay import wait_processed
from pipeline.simulate.run import SimConfig, simulate
from tests.infra.conftest import live_primary, playbook_failure, run_playbook, superuser_query

FIRST_DAY = date(2016, 8, 5)  # drill: the first two days from here that operations has no delivery of
FAULTS = ("gap", "duplicate", "bitflip", "truncate", "repeat_pass")
TRANSIT_KEY = "SELECT apid, seq, round(obt::numeric, 6), fov, ccd_row, ac_pixel FROM transits"


def _ledger(conn, names) -> list[tuple]:
    return conn.execute(
        "SELECT file_name, byte_offset, length, status, coalesce(reason, '') FROM packet_ledger"
        " WHERE file_name = ANY(%s) ORDER BY 1, 2, 3",
        (names,),
    ).fetchall()


def _transits(conn, chunks) -> list[tuple]:
    return sorted(conn.execute(TRANSIT_KEY + " WHERE chunk_id = ANY(%s)", (chunks,)).fetchall())


@pytest.fixture(scope="module")
def day(tmp_path_factory, topology) -> Path:
    primary = live_primary(topology)
    settings = dict(superuser_query(topology, primary, "SELECT key, value FROM soc_settings"))
    delivered = {name for (name,) in superuser_query(topology, primary, "SELECT file_name FROM deliveries")}

    def free(d: date) -> bool:
        return not any(x.strftime("-%Y%m%dT") in n for n in delivered for x in (d, d + timedelta(1)))

    day = next(d for d in (FIRST_DAY + timedelta(2 * n) for n in range(500)) if free(d))
    out = tmp_path_factory.mktemp("drill")
    cfg = SimConfig(start=day.isoformat(), days=2.0, scale=0.0003, seed=int(settings["catalogue_seed"]),
                    progress=False, faults=FAULTS)  # fmt: skip
    simulate(out, cfg)
    os.chmod(out, 0o755)
    return out / "passes"


@pytest.fixture(scope="module")
def reference(day, topology):
    """The same files, ingested and reduced (flushed) into a throwaway database with no failure."""
    primary = live_primary(topology)
    settings = dict(superuser_query(topology, primary, "SELECT key, value FROM soc_settings"))
    server = LocalServer(settings=THROWAWAY_SETTINGS).start()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE ref")
        keep = ("chunk_seconds", "lateness_seconds", "catalogue_seed", "catalogue_scale")
        migrate.init(server.dsn("ref"), {**{k: settings[k] for k in keep}, "healpix_order": 2})
        with psycopg.connect(server.dsn("ref"), autocommit=True) as conn:
            for f in pending_files(day):
                ingest_file(conn, f)
            reduce_due(conn, make_reducer(conn), flush=True)
            names = [f.name for f in pending_files(day)]
            chunks = [c for (c,) in conn.execute("SELECT chunk_id FROM current_chunks").fetchall()]
            yield {"names": names, "chunks": chunks, "ledger": _ledger(conn, names),
                   "transits": _transits(conn, chunks)}  # fmt: skip
    finally:
        server.destroy()


def _operations_config(topology) -> Path:
    deployment = topology.var(topology.any_host, "soc_deployment")
    state = Path.home() / ".local/share/soc-pipeline/state" / deployment
    active = (state / "active-reduction").read_text().strip()
    return Path(topology.var(active, "soc_etc_dir")) / "soc.yaml"


def test_kill_the_primary_during_ingest_fail_over_and_lose_nothing(day, reference, topology):
    primary = live_primary(topology)
    names = reference["names"]
    assert len(reference["transits"]) > 1000, "the drill's days carry too few transits to compare"
    incoming = Path(topology.var(topology.groups["reduction"][0], "soc_incoming_dir"))
    deliver(pending_files(day), incoming)

    # kill the primary while the watcher writes a delivery into it (within 120 s)
    deadline = time.monotonic() + 120
    query = f"SELECT count(*) FROM deliveries WHERE file_name = ANY(ARRAY{names!r})"
    writing = ("SELECT count(*) FROM pg_stat_activity WHERE usename = 'soc_pipeline' AND state = 'active'"
               " AND (query ILIKE '%COPY%' OR query ILIKE '%soc-intake%')")  # fmt: skip
    while int(superuser_query(topology, primary, writing)[0][0]) == 0:
        assert time.monotonic() < deadline, "the watcher wrote nothing within 120 s"
        time.sleep(0.05)
    data_dir = topology.var(primary, "postgresql_data_directory")
    postmaster = int(Path(data_dir, "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGKILL)
    ingested_before = int(superuser_query(topology, next(
        h for h in topology.groups["db_servers"] if h != primary), query)[0][0])  # fmt: skip

    failover = run_playbook("failover.yml")
    assert failover.returncode == 0, playbook_failure(failover)
    new_primary = live_primary(topology)
    assert new_primary != primary
    assert superuser_query(topology, primary, "SELECT pg_is_in_recovery()") == [["t"]]

    dsn = load(_operations_config(topology)).write_dsn
    assert f"host={topology.address(new_primary)} " in dsn
    wait_processed(dsn, names, timeout=900)
    reduce_due_parallel(dsn, functools.partial(make_reducer, outbox=None), 1, flush=True)

    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _ledger(conn, names) == reference["ledger"]
        got = _transits(conn, reference["chunks"])
    assert len(got) == len(reference["transits"]), (len(got), len(reference["transits"]))
    assert got == reference["transits"]
    print(f"drill: {ingested_before} of {len(names)} deliveries in before the kill; "
          f"{len(got)} transits, as the clean run")  # fmt: skip


def test_switch_back_to_the_inventorys_primary(topology):
    if live_primary(topology) == topology.groups["db_primary"][0]:
        pytest.skip("already the inventory's primary")
    switchover = run_playbook("switchover.yml")
    assert switchover.returncode == 0, playbook_failure(switchover)
    assert live_primary(topology) == topology.groups["db_primary"][0]
    rows = superuser_query(topology, topology.groups["db_primary"][0],
                           "SELECT application_name, sync_state FROM pg_stat_replication")  # fmt: skip
    assert rows == [[topology.groups["db_replica"][0].replace("-", "_"), "sync"]]
