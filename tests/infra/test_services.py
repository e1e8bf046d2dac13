"""The pipeline's services: the active reduction host ingests and tees, its hot standby waits stopped, the
validation host ingests its own copy; the configuration points writes at the primary, reads at the
standby."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.infra.conftest import live_primary


def _active(topology) -> str:
    state = (
        Path.home() / ".local/share/soc-pipeline/state" / topology.var(topology.any_host, "soc_deployment")
    )
    return (state / "active-reduction").read_text().strip()


def test_the_active_reduction_host_ingests_and_tees_the_standby_waits(host, topology):
    name = host.backend.get_hostname()
    if name not in topology.groups["reduction"]:
        pytest.skip("not a reduction host")
    service = topology.var(name, "soc_service_name")
    running = name == _active(topology)
    for unit in (service, service.replace("soc-ingest", "soc-tee")):
        assert host.service(unit).is_running is running, unit
    assert host.file(f"{topology.var(name, 'soc_root')}/venv/bin/soc").is_file


def test_the_validation_host_ingests_its_own_copy(host, topology):
    name = host.backend.get_hostname()
    if name not in topology.groups["validation_hosts"]:
        pytest.skip("not a validation host")
    assert host.service(topology.var(name, "soc_service_name")).is_running


def test_writes_go_to_the_primary_and_reads_to_the_standby(host, topology):
    name = host.backend.get_hostname()
    if name not in topology.groups["reduction"]:
        pytest.skip("not a reduction host")
    config = yaml.safe_load(host.file(f"{topology.var(name, 'soc_etc_dir')}/soc.yaml").content_string)
    primary = live_primary(topology)
    standby = next(h for h in topology.groups["db_servers"] if h != primary)
    assert f"host={topology.address(primary)} " in config["database"]["write_dsn"]
    assert f"host={topology.address(standby)} " in config["database"]["read_dsn"]
    for dsn in config["database"].values():
        assert "sslmode=verify-full" in dsn and "passfile=" in dsn
