"""The Jenkins jobs of jenkins/ (Jenkins Job Builder): rendered offline by `jenkins-jobs test`, as a user
runs it (the virtual environment's console script, the configuration file jenkins/jenkins_jobs.ini, no
Jenkins server), compared with the golden XML of jenkins/golden/ (`jenkins/render --update-golden`
rewrites it after an intended change), and checked for what the jobs must do: the pipelines' Groovy
included verbatim, deploy's check before its apply and production's approval between them, the quality
job's coverage floor, the nightly comparison's timer.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JENKINS = REPO / "jenkins"
GOLDEN = JENKINS / "golden"
PIPELINES = JENKINS / "pipelines"
JENKINS_JOBS = Path(sys.executable).parent / "jenkins-jobs"
REGENERATE = "jenkins/render --update-golden"

# The sh steps of a deploy pipeline that run ansible-playbook: the check, and the apply.
CHECK = re.compile(r"sh '[^\n']*ansible-playbook [^\n']*--check --diff'")
APPLY = re.compile(r"sh '[^\n']*ansible-playbook (?:(?!--check)[^\n'])*--diff'")


def render(out: Path) -> dict[str, str]:
    """Every job's XML by name: `jenkins-jobs test --config-xml -o OUT jenkins/` (OUT/JOB/config.xml)."""
    if not JENKINS_JOBS.exists():
        pytest.fail(f"{JENKINS_JOBS} is missing: jenkins-job-builder is one of the test extras (make venv)")
    run = subprocess.run(
        [str(JENKINS_JOBS), "--conf", str(JENKINS / "jenkins_jobs.ini"), "--log_level", "warning",
         "test", "--config-xml", "-o", str(out), str(JENKINS)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "XDG_CACHE_HOME": str(out.parent / "cache")},
    )  # fmt: skip
    assert run.returncode == 0, f"jenkins-jobs test failed:\n{run.stderr[-4000:]}"
    return {p.parent.name: p.read_text(encoding="utf-8") for p in sorted(out.glob("*/config.xml"))}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    jobs = render(tmp_path_factory.mktemp("jenkins") / "jobs")
    assert jobs, "jenkins-jobs test rendered no job"
    return jobs


@pytest.fixture(scope="module")
def xml(rendered) -> dict[str, ET.Element]:
    return {name: ET.fromstring(text) for name, text in rendered.items()}


def golden_jobs() -> list[str]:
    return sorted(p.stem for p in GOLDEN.glob("*.xml"))


def script(job: ET.Element) -> str:
    """The Groovy of a pipeline job (XML entities decoded)."""
    node = job.find("./definition/script")
    assert node is not None, "not a pipeline job with an inline script"
    return node.text or ""


def parameters(job: ET.Element) -> dict[str, ET.Element]:
    return {p.findtext("name"): p for p in job.findall(".//parameterDefinitions/*")}


def choices(parameter: ET.Element) -> list[str]:
    return [s.text for s in parameter.findall("./choices/a/string")]


def shell_commands(job: ET.Element) -> str:
    return "\n".join(c.text or "" for c in job.findall("./builders/hudson.tasks.Shell/command"))


def pipeline_jobs(xml: dict[str, ET.Element]) -> dict[str, ET.Element]:
    return {name: job for name, job in xml.items() if job.tag == "flow-definition"}


def deploy_jobs(xml: dict[str, ET.Element]) -> dict[str, ET.Element]:
    jobs = {name: job for name, job in pipeline_jobs(xml).items() if "INVENTORY" in parameters(job)}
    return {name: job for name, job in jobs.items() if "PLAYBOOK" in parameters(job)}


def only_job(xml: dict[str, ET.Element], suffix: str) -> ET.Element:
    found = [job for name, job in xml.items() if name.endswith(suffix)]
    assert len(found) == 1, f"expected one job named *{suffix}, found {len(found)} in {sorted(xml)}"
    return found[0]


# --- The rendering is the golden XML ------------------------------------------------------------------


def test_every_job_has_golden_xml_and_every_golden_file_a_job(rendered):
    jobs, golden = set(rendered), set(golden_jobs())
    assert jobs == golden, (
        f"jobs without golden XML: {sorted(jobs - golden)}; golden XML without a job: "
        f"{sorted(golden - jobs)}. If the change is intended: {REGENERATE}"
    )


@pytest.mark.parametrize("name", golden_jobs())
def test_job_renders_as_its_golden_xml(rendered, name):
    expected = (GOLDEN / f"{name}.xml").read_text(encoding="utf-8")
    actual = rendered.get(name)
    assert actual is not None, f"no job {name} is rendered any more ({REGENERATE} if intended)"
    if actual != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True),
            fromfile=f"jenkins/golden/{name}.xml", tofile=f"rendered {name}",
        )  # fmt: skip
        pytest.fail(f"{name} differs from its golden XML (if intended: {REGENERATE}):\n{''.join(diff)}")


def test_render_script_writes_what_jenkins_jobs_renders(rendered, tmp_path):
    """jenkins/render OUT (what --update-golden writes into jenkins/golden) is jenkins-jobs test's output."""
    out = tmp_path / "out"
    run = subprocess.run(
        [str(JENKINS / "render"), str(out)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "JENKINS_JOBS": str(JENKINS_JOBS), "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert {p.stem: p.read_text(encoding="utf-8") for p in out.glob("*.xml")} == rendered


# --- Pipelines: the Groovy of jenkins/pipelines/, verbatim ------------------------------------------


def test_pipeline_jobs_run_a_groovy_file_verbatim(xml):
    """JJB formats strings ({name} placeholders); `!include-raw-verbatim:` must leave Groovy's braces alone:
    each pipeline job's script is exactly one file of jenkins/pipelines/, and each file is some job's."""
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(PIPELINES.glob("*.groovy"))}
    assert files, "no Groovy file in jenkins/pipelines/"
    used = set()
    for name, job in pipeline_jobs(xml).items():
        text = script(job)
        same = [f for f, groovy in files.items() if groovy == text]
        assert same, f"{name}: its script is no file of jenkins/pipelines/ verbatim"
        assert "{{" not in text and "}}" not in text
        used.update(same)
    assert used == set(files), f"Groovy files no job runs: {sorted(set(files) - used)}"


def test_pipeline_parameters_are_defined_and_fixed_settings_are_single_choices(xml):
    """Every params.NAME a pipeline's Groovy reads is a parameter of its job, and the settings that select
    what a job acts on (inventory, repository, agent, jobs) are choices of one value: a build cannot
    point a production deploy at another repository or inventory."""
    fixed = {"INVENTORY", "GIT_URL", "AGENT_LABEL", "JOB_PREFIX"}
    for name, job in pipeline_jobs(xml).items():
        defined = parameters(job)
        used = set(re.findall(r"params\.([A-Z_]+)", script(job)))
        undefined = sorted(used - set(defined))
        assert not undefined, f"{name}: its Groovy reads parameters the job does not define: {undefined}"
        for setting in used & fixed:
            assert defined[setting].tag == "hudson.model.ChoiceParameterDefinition", (name, setting)
            assert len(choices(defined[setting])) == 1, (name, setting, choices(defined[setting]))


# --- Deploy ---------------------------------------------------------------------------------------


def test_a_deploy_job_per_inventory_of_the_repository(xml):
    jobs = deploy_jobs(xml)
    inventories = {choices(parameters(job)["INVENTORY"])[0] for job in jobs.values()}
    assert {"local", "vagrant", "production"} <= inventories
    present = {p.name.removesuffix(".example") for p in (REPO / "ansible" / "inventories").iterdir()}
    assert inventories <= present, f"deploy jobs for inventories that do not exist: {inventories - present}"


def test_deploy_checks_with_diff_before_it_applies(xml):
    for name, job in deploy_jobs(xml).items():
        text = script(job)
        checks, applies = list(CHECK.finditer(text)), list(APPLY.finditer(text))
        assert len(checks) == 1 and len(applies) == 1, f"{name}: one check and one apply expected"
        order = [text.index("stage('Check')"), checks[0].start(), text.index("stage('Approval')"),
                 text.index("stage('Apply')"), applies[0].start()]  # fmt: skip
        assert order == sorted(order), (
            f"{name}: the check (--check --diff) must run in a stage before the apply"
        )


def test_production_deploy_waits_for_an_approval_before_the_apply(xml):
    job = only_job(deploy_jobs(xml), "-deploy-production")
    assert choices(parameters(job)["INVENTORY"]) == ["production"]
    text = script(job)
    approval, apply_stage = text.index("stage('Approval')"), text.index("stage('Apply')")
    step = text.find("input(", approval, apply_stage)
    assert step > 0, "no input step in the Approval stage"
    assert CHECK.search(text).start() < step < APPLY.search(text).start()
    # the stage runs for every inventory that is not unattended: production is not
    assert "expression { attended() }" in text[approval:step]
    assert re.search(r"boolean attended\(\) \{\s*return !\(params\.INVENTORY in UNATTENDED\)", text)
    unattended = re.search(r"^UNATTENDED = \[(.*)\]$", text, re.MULTILINE)
    assert unattended, "no UNATTENDED list"
    assert "production" not in re.findall(r"'([^']*)'", unattended.group(1))
    assert re.search(r"input\((?:[^)]|\n)*submitter: APPROVERS", text), "the approval names no approvers"


# --- Quality, acceptance, nightly -------------------------------------------------------------------


def test_quality_job_fails_below_a_coverage_floor(xml):
    job = only_job(xml, "-quality")
    commands = shell_commands(job)
    floor = re.search(r"coverage report [^\n]*--fail-under=(\d+(?:\.\d+)?)", commands)
    assert floor, "the quality job has no coverage floor (coverage report --fail-under)"
    assert 0 < float(floor.group(1)) <= 100
    assert commands.index("coverage run") < commands.index("coverage xml") < floor.start()
    failing = job.find(".//hudson.plugins.cobertura.CoberturaPublisher/failingTarget//entry")
    assert failing is not None, "the coverage report has no failing target"
    metric = failing.findtext("hudson.plugins.cobertura.targets.CoverageMetric")
    assert (metric, float(failing.findtext("int"))) == ("LINE", float(floor.group(1))), (
        "not the build's floor"
    )
    for tool in ("make lint", "mypy", "ruff format --check"):
        assert tool in commands, f"the quality job does not run {tool}"


def test_acceptance_publishes_the_cucumber_report_and_junit(xml):
    job = only_job(xml, "-acceptance")
    assert "make acceptance" in shell_commands(job)
    cucumber = job.find(".//net.masterthought.jenkins.CucumberReportPublisher")
    assert cucumber is not None, "no Cucumber report"
    assert (cucumber.findtext("jsonReportDirectory"), cucumber.findtext("fileIncludePattern")) == (
        "reports", "cucumber.json",
    )  # fmt: skip
    junit = job.findtext(".//hudson.tasks.junit.JUnitResultArchiver/testResults")
    assert "reports/acceptance.xml" in junit


def test_nightly_compare_runs_on_a_timer_clone_replay_compare_and_publishes(xml):
    job = only_job(xml, "-nightly-compare")
    spec = job.findtext(".//triggers/hudson.triggers.TimerTrigger/spec")
    assert spec and len(spec.split()) == 5, f"no timer trigger (cron spec) on the nightly job: {spec!r}"
    text = script(job)
    steps = ["clone.yml -e clone_action=take", "replay.yml", "soc compare", "publishHTML"]
    where = [text.find(s) for s in steps]
    assert all(i > 0 for i in where) and where[:3] == sorted(where[:3]), dict(zip(steps, where, strict=True))
    assert "--html reports/compare.html" in text and "reportFiles: 'compare.html'" in text


def test_build_job_makes_the_wheel_and_checks_the_docs(xml):
    job = only_job(xml, "-build")
    commands = shell_commands(job)
    assert "python -m pip wheel --no-deps -w dist ." in commands
    assert "jenkins/scripts/check_doc_links.py" in commands
    assert "dist/*.whl" in job.findtext(".//hudson.tasks.ArtifactArchiver/artifacts")


# --- The docs job's link checker --------------------------------------------------------------------


def check_links(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(JENKINS / "scripts" / "check_doc_links.py"), *map(str, args)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_link_checker_reports_each_broken_relative_link_and_anchor(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Title\n\n## Two words, and more\n\ntext\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "See [a](docs/a.md), [two](docs/a.md#two-words-and-more), [web](https://example.org/x)\n"
        "and [gone](docs/missing.md) and ![img](docs/none.png) and [bad](docs/a.md#nowhere)\n"
        "```sh\n[not a link](docs/in-code.md)\n```\nand `[code](docs/inline.md)` [self](#title-here)\n"
        "# Title here\n",
        encoding="utf-8",
    )
    run = check_links(tmp_path / "README.md", docs)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    broken = [line.split(": ")[1] for line in lines]
    assert broken == ["docs/missing.md", "docs/none.png", "docs/a.md#nowhere"]
    assert all(line.startswith(f"{tmp_path / 'README.md'}:2:") for line in lines)


def test_link_checker_passes_good_links_and_refuses_a_missing_argument(tmp_path):
    (tmp_path / "a.md").write_text("[b](b.md#b) [dir](.)\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("## B\n", encoding="utf-8")
    assert check_links(tmp_path).returncode == 0
    missing = check_links(tmp_path / "nothing.md")
    assert missing.returncode == 2 and "nothing.md" in missing.stderr


# --- Every job's first step ---------------------------------------------------------------------------


def test_prepare_workspace_keeps_only_the_venv_vaults_and_tracked_files(tmp_path):
    """In a throwaway checkout (its Makefile's venv target a stand-in): untracked files and earlier reports
    go, the virtual environment, Vagrant's machines and the inventories' vaults stay; outside a Jenkins
    build the script refuses to run."""
    repo = tmp_path / "checkout"
    script = repo / "jenkins" / "scripts" / "prepare-workspace"
    script.parent.mkdir(parents=True)
    script.write_bytes((JENKINS / "scripts" / "prepare-workspace").read_bytes())
    script.chmod(0o755)
    (repo / "Makefile").write_text("venv:\n\ttouch venv-made\n", encoding="utf-8")
    (repo / ".gitignore").write_text(".venv/\nreports/\n", encoding="utf-8")
    kept = [".venv/bin/python", ".vagrant/machines/id", "ansible/inventories/local/group_vars/all/vault.yml"]
    gone = ["reports/old.xml", "stray.txt", "ansible/inventories/local/group_vars/all/other.yml"]
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "tracked"], check=True)
    for name in kept + gone:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("x", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("BUILD_NUMBER", "MAKEFLAGS", "MAKELEVEL")}

    refused = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2 and "untracked" in refused.stderr
    assert all((repo / name).exists() for name in gone)

    run = subprocess.run(
        [str(script)], capture_output=True, text=True, env={**env, "BUILD_NUMBER": "7"}, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert [name for name in kept if not (repo / name).exists()] == []
    assert [name for name in gone if (repo / name).exists()] == []
    assert (repo / "venv-made").exists() and (repo / "reports").is_dir() and (repo / "dist").is_dir()
    assert (repo / "Makefile").exists() and script.exists()
