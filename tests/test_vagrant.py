"""The Vagrantfile and the Ansible inventories: vagrant accepts the Vagrantfile, the vagrant inventory names
the Vagrantfile's machines with their addresses, and every inventory has the same groups.

Nothing here starts a machine or contacts an address: `vagrant validate` only parses, ansible-inventory only
reads the inventory files.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VAGRANTFILE = REPO / "Vagrantfile"
INVENTORIES = REPO / "ansible" / "inventories"
INVENTORY_NAMES = ("local", "vagrant", "production.example")
# The groups the playbooks and roles know; an inventory may add groups of its own for its variables
# (local: this_machine), which must then hold every host.
ROLE_GROUPS = ("db_primary", "db_replica", "reduction", "validation_hosts")  # a host's roles
TOPOLOGY_GROUPS = {*ROLE_GROUPS, "db_servers"}
DB_SERVERS_CHILDREN = {"db_primary", "db_replica"}
# ansible-core of the virtual environment that runs the tests, not whichever one is on PATH.
ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"


def inventory(name: str, tmp_path: Path) -> dict:
    """`ansible-inventory --list` of an inventory, from its hosts file alone.

    The group_vars are not read (no vars plugins): the local and vagrant inventories' vaults would need
    their password, and the names, groups and addresses are all in hosts.yml. An empty configuration file
    keeps ansible/ansible.cfg and the user's configuration out.
    """
    if not ANSIBLE_INVENTORY.exists():
        pytest.fail(f"{ANSIBLE_INVENTORY} is missing: install ansible-core into the virtual environment")
    config = tmp_path / "ansible.cfg"
    config.write_text("[defaults]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(config), ANSIBLE_VARS_ENABLED="", ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"))
    result = subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(INVENTORIES / name), "--list"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"ansible-inventory -i inventories/{name}:\n{result.stderr}"
    return json.loads(result.stdout)


def hosts_of(inv: dict, group: str) -> set[str]:
    """Every host of a group, through its children."""
    entry = inv.get(group, {})
    hosts = set(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts |= hosts_of(inv, child)
    return hosts


def groups_of(inv: dict) -> set[str]:
    return {name for name in inv if name not in ("_meta", "all", "ungrouped")}


def vagrantfile_hosts() -> dict[str, str]:
    """name -> private-network address, from the HOSTS table of the Vagrantfile."""
    text = VAGRANTFILE.read_text()
    found = dict(re.findall(r'^\s*"([A-Za-z0-9-]+)"\s*=>\s*\{\s*ip:\s*"([0-9.]+)"', text, re.MULTILINE))
    assert found, 'no HOSTS entries ("name" => { ip: "...", ... }) found in the Vagrantfile'
    return found


def test_vagrant_validates_the_vagrantfile(tmp_path):
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("no vagrant command (Debian: apt-get install --no-install-recommends vagrant)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAGRANT_")}
    env.update(
        VAGRANT_CWD=str(REPO),
        VAGRANT_HOME=str(tmp_path / "vagrant.d"),  # no user plugins or boxes; nothing written to ~
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"),  # no .vagrant/ in the repository
        VAGRANT_CHECKPOINT_DISABLE="1",  # no version check over the network
    )
    result = subprocess.run(
        [vagrant, "validate", "--ignore-provider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def test_vagrant_inventory_names_the_vagrantfile_machines(tmp_path):
    machines = vagrantfile_hosts()
    inv = inventory("vagrant", tmp_path)
    hostvars = inv["_meta"]["hostvars"]
    assert set(hostvars) == set(machines)
    assert {h: v.get("ansible_host") for h, v in hostvars.items()} == machines
    assert {h: v.get("soc_address") for h, v in hostvars.items()} == machines
    network = ipaddress.ip_network("192.168.56.0/24")
    assert all(ipaddress.ip_address(ip) in network for ip in machines.values())
    assert len(set(machines.values())) == len(machines)


def test_vagrant_inventory_has_the_local_topology(tmp_path):
    """The same hosts in the same groups as the one-machine inventory (validation in validation_hosts)."""
    local = inventory("local", tmp_path)
    vagrant = inventory("vagrant", tmp_path)
    for group in TOPOLOGY_GROUPS:
        assert hosts_of(vagrant, group) == hosts_of(local, group), group
    assert hosts_of(vagrant, "validation_hosts") == {"validation"}


def test_every_inventory_has_the_same_groups(tmp_path):
    for name in INVENTORY_NAMES:
        inv = inventory(name, tmp_path)
        groups = groups_of(inv)
        assert TOPOLOGY_GROUPS <= groups, f"{name}: missing {TOPOLOGY_GROUPS - groups}"
        assert set(inv["db_servers"].get("children", [])) == DB_SERVERS_CHILDREN, name
        assert not inv["db_servers"].get("hosts"), f"{name}: db_servers has hosts of its own"
        every_host = set(inv["_meta"]["hostvars"])
        for group in TOPOLOGY_GROUPS:
            assert hosts_of(inv, group), f"{name}: group {group} is empty"
        # A host belongs to exactly one of the groups its roles are chosen by.
        for host in every_host:
            leaves = [group for group in ROLE_GROUPS if host in hosts_of(inv, group)]
            assert len(leaves) == 1, f"{name}: {host} is in {leaves}"
        # Any other group is the inventory's own, for its variables: it holds every host.
        for group in groups - TOPOLOGY_GROUPS:
            assert hosts_of(inv, group) == every_host, f"{name}: {group} is not of the topology nor of all"
        assert not inv.get("ungrouped", {}).get("hosts"), f"{name}: hosts outside every group"


def test_production_example_uses_placeholders(tmp_path):
    inv = inventory("production.example", tmp_path)
    documentation = ipaddress.ip_network("192.0.2.0/24")
    for host, hostvars in inv["_meta"]["hostvars"].items():
        assert ipaddress.ip_address(hostvars["soc_address"]) in documentation, host
        assert hostvars["ansible_host"].endswith(".example.org"), host


def test_vagrant_group_vars():
    """The settings of the Vagrant machines (read as YAML: the vault needs no password for this)."""
    inv_dir = INVENTORIES / "vagrant" / "group_vars"
    files = sorted(inv_dir.glob("*.yml"))
    assert len(files) == 1, f"one group_vars file of the inventory's own group expected: {files}"
    settings = yaml.safe_load(files[0].read_text())
    assert settings["ansible_user"] == "vagrant"
    assert settings["ansible_become_method"] == "sudo"
    assert settings["ansible_python_interpreter"] == "/usr/bin/python3"
    assert settings["validation_db_host"] == "db-replica"
    assert settings["cow_source"] and settings["cow_mount"]
