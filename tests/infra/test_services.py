"""The pipeline's services: the active reduction host ingests and tees, its hot standby waits stopped, the
validation host ingests its own copy; the configuration points writes at the primary, reads at the
standby."""

from __future__ import annotations

import shlex
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


def _init_script_var(script: str, name: str) -> str:
    """A variable the init script sets (NAME=value, quoted by the template as the shell reads it)."""
    line = next(ln for ln in script.splitlines() if ln.startswith(f"{name}="))
    return shlex.split(line.partition("=")[2])[0]


def test_the_systemd_units_load_and_run_what_the_init_scripts_run(host, topology):
    """Where systemd is init its units run the services; here the init scripts of the same names do. Each
    unit is loaded as systemd would load it (`systemd-analyze verify`: its keys, its executable, its user),
    and a running service's command line, user, directory and log are the unit's."""
    name = host.backend.get_hostname()
    if name not in topology.groups["reduction"] + topology.groups["validation_hosts"]:
        pytest.skip("no pipeline services on this host")
    if not host.exists("systemd-analyze"):
        pytest.skip("systemd is not installed on this host: its units are never loaded")
    ingest = topology.var(name, "soc_service_name")
    candidates = (ingest, ingest.replace("soc-ingest", "soc-tee"))
    services = [s for s in candidates if host.file(f"/etc/init.d/{s}").exists]
    assert ingest in services
    for service in services:
        path = f"/etc/systemd/system/{service}.service"
        check = host.run("systemd-analyze verify %s", path)
        assert check.rc == 0 and not check.stderr.strip(), check.stderr
        unit = {}
        for line in host.file(path).content_string.splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                unit[key] = value
        script = host.file(f"/etc/init.d/{service}").content_string
        assert unit["User"] == _init_script_var(script, "RUNAS")
        assert unit["WorkingDirectory"] == _init_script_var(script, "HOME")
        assert unit["StandardOutput"] == "append:" + _init_script_var(script, "LOGFILE")
        if not host.service(service).is_running:
            continue
        pid = host.file(_init_script_var(script, "PIDFILE")).content_string.strip()
        process = host.process.get(pid=int(pid))
        assert process.user == unit["User"]
        argv = host.file(f"/proc/{pid}/cmdline").content_string.rstrip("\0").split("\0")
        exec_start = shlex.split(unit["ExecStart"])
        # the executable is a script: the kernel runs its interpreter, with the script and its arguments
        assert argv[-len(exec_start) :] == exec_start, (argv, exec_start)
