"""Run first (file order): provisioning converges — a second run of site.yml changes nothing anywhere."""

from __future__ import annotations

import re

from tests.infra.conftest import playbook_failure, run_playbook


def test_a_second_site_run_changes_nothing(topology):
    run = run_playbook("site.yml")
    assert run.returncode == 0, playbook_failure(run)
    recap = dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", run.stdout, re.MULTILINE))
    assert set(recap) == set(topology.hostvars), recap
    changed = {h: int(n) for h, n in recap.items() if int(n)}
    tasks = re.findall(r"^TASK \[(.+?)\].*\n(?:.*\n)*?changed: \[(.+?)\]", run.stdout, re.MULTILINE)
    assert not changed, f"changed on a second run: {changed}; tasks: {tasks[:10]}"
