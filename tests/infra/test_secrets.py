"""No secret in the repository: the vault is encrypted and untracked, no password appears in any tracked
file, and the deployed configuration keeps passwords only in passfiles readable by their owner."""

from __future__ import annotations

import subprocess

import pytest

from tests.infra.conftest import REPO, inventory_path


def _tracked() -> list[str]:
    return subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()


def test_the_vault_is_encrypted_and_not_in_git():
    vault = inventory_path() / "group_vars" / "all" / "vault.yml"
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")
    assert str(vault.relative_to(REPO)) not in _tracked()


def test_no_password_in_any_tracked_file(topology):
    passwords = topology.var(topology.any_host, "vault_postgresql_passwords").values()
    for password in passwords:
        found = subprocess.run(["git", "grep", "-lF", password], cwd=REPO, capture_output=True, text=True)
        assert found.returncode == 1 and not found.stdout, f"a vault password is in {found.stdout.split()}"


def test_deployed_passwords_only_in_owner_readable_passfiles(host, topology):
    name = host.backend.get_hostname()
    if name not in topology.groups["reduction"] + topology.groups["validation_hosts"]:
        pytest.skip("no pipeline on this host")
    etc = topology.var(name, "soc_etc_dir")
    config = host.file(f"{etc}/soc.yaml").content_string
    passfile = host.file(f"{etc}/pgpass")
    assert passfile.mode == 0o600
    for password in topology.var(name, "vault_postgresql_passwords").values():
        assert password not in config
    assert "passfile=" in config
