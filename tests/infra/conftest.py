"""The testinfra suite of a provisioned topology: `pytest tests/infra --hosts=ansible://all
--ansible-inventory=ansible/inventories/local` after `ansible-playbook site.yml` (`make infra` does both).

Tests taking testinfra's `host` run once per inventory host and skip the hosts they are not about; the
others check the topology as a whole. The expected roles, privileges and hba entries are read from the same
data the roles are driven by (ansible/group_vars/all/main.yml), the passwords from the inventory's vault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent


def inventory_path() -> Path:
    return Path(os.environ.get("SOC_INVENTORY", ANSIBLE_DIR / "inventories" / "local")).resolve()


def ansible_env() -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


def run_playbook(name: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """ansible-playbook NAME against the inventory; output kept for the assertion messages."""
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory_path()), name, *args],
        cwd=ANSIBLE_DIR, env=ansible_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def playbook_failure(run: subprocess.CompletedProcess) -> str:
    """What an assertion on a playbook run shows: every failed task under its header, then the recap and the
    end of stderr (the whole log is too long for a report, and its tail rarely names the failure)."""
    lines = run.stdout.splitlines()
    failed = [i for i, line in enumerate(lines) if line.startswith(("fatal:", "failed:"))]
    shown = []
    headers = ("TASK [", "RUNNING HANDLER [")
    for i in failed:
        header = next((j for j in range(i, -1, -1) if lines[j].startswith(headers)), i)
        shown += [*lines[header : i + 1], "..."]
    recap = next((j for j, line in enumerate(lines) if line.startswith("PLAY RECAP")), len(lines))
    return "\n".join(shown + lines[recap:]) + "\n" + run.stderr[-2000:]


# The variables the tests need, rendered by Ansible itself for every host (templates resolved, vault open).
HOST_VARS = (
    "soc_address", "soc_deployment", "soc_pki_dir", "soc_root", "soc_etc_dir", "soc_service_name",
    "soc_incoming_dir",
    "postgresql_cluster", "postgresql_socket_dir", "postgresql_conf_dir", "postgresql_data_directory",
    "postgresql_users", "postgresql_connect_roles", "postgresql_read_roles", "postgresql_hba_entries",
    "vault_postgresql_passwords", "group_names", "cow_mount", "db_replica_wal_directory",
)  # fmt: skip


@dataclass(frozen=True)
class Topology:
    hostvars: dict[str, dict]
    groups: dict[str, list[str]]

    def var(self, host: str, name: str):
        return self.hostvars[host][name]

    def address(self, host: str) -> str:
        return self.var(host, "soc_address")

    def cluster(self, host: str) -> str:
        return self.var(host, "postgresql_cluster")

    def socket_dir(self, host: str) -> str:
        return self.var(host, "postgresql_socket_dir")

    @property
    def any_host(self) -> str:
        return self.groups["db_primary"][0]

    def password(self, role: str) -> str:
        return self.var(self.any_host, "vault_postgresql_passwords")[role]

    @property
    def pki_dir(self) -> Path:
        return Path(self.var(self.any_host, "soc_pki_dir"))


@pytest.fixture(scope="session")
def topology() -> Topology:
    msg = "{{ {" + ", ".join(f"'{v}': {v} | default(None)" for v in HOST_VARS) + "} }}"
    out = subprocess.run(
        [str(BIN / "ansible"), "all", "-i", str(inventory_path()), "--playbook-dir", str(ANSIBLE_DIR),
         "-m", "ansible.builtin.debug", "-a", f"msg={msg}"],
        cwd=ANSIBLE_DIR, capture_output=True, text=True, check=True,
        env={**ansible_env(), "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
             "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"},
    ).stdout  # fmt: skip
    # one task; the linear strategy reports it once with every host, Mitogen's once per host
    tasks = json.loads(out)["plays"][0]["tasks"]
    hostvars = {h: r["msg"] for task in tasks for h, r in task["hosts"].items()}
    groups: dict[str, list[str]] = {}
    for h, hv in hostvars.items():
        for g in hv["group_names"]:
            groups.setdefault(g, []).append(h)
    groups["db_servers"] = sorted(set(groups.get("db_primary", []) + groups.get("db_replica", [])))
    return Topology(hostvars, {g: sorted(v) for g, v in groups.items()})


def superuser_query(topology: Topology, host: str, query: str) -> list[list[str]]:
    """Rows of a query run as the postgres superuser over the host's local socket (peer authentication)."""
    out = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-h", topology.socket_dir(host), "-p", "5432",
         "-d", "soc", "-XAt", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", query],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line.split("|") for line in out.splitlines() if line]


def connect(topology: Topology, host: str, role: str, **kw) -> psycopg.Connection:
    """A login of the role to the host's PostgreSQL, over TLS verified against the deployment's CA."""
    params = dict(
        host=topology.address(host), port=5432, dbname="soc", user=role, password=topology.password(role),
        sslmode="verify-full", sslrootcert=str(topology.pki_dir / "ca.crt"), connect_timeout=10,
    )  # fmt: skip
    params.update(kw)
    return psycopg.connect(**params, autocommit=True)


def live_primary(topology: Topology) -> str:
    for h in topology.groups["db_servers"]:
        if superuser_query(topology, h, "SELECT pg_is_in_recovery()") == [["f"]]:
            return h
    raise AssertionError("no db server is a primary")
