"""Step definitions of features/release_gate.feature: a candidate release (the pipeline's wheel built from a
git revision) on validation beside the current release in operations, and soc compare as the gate.
Imported by steps/conftest.py; the candidates are made and deployed by the `candidates` fixture."""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_bdd import given, parsers, then, when

from tests.infra.conftest import playbook_failure, run_playbook

IMAGE_PARAMETERS = "pipeline/reduce/image_params.py"


@dataclass(frozen=True)
class Candidate:
    revision: str  # the commit the wheel is built from
    what: str


class Candidates:
    """Candidate releases made from the repository, deployed on validation with candidate.yml; validation
    goes back to the release operations runs when the session ends."""

    def __init__(self, repository: Path, work: Path):
        self.repository = repository
        self.work = work
        self.deployed: Candidate | None = None

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        return subprocess.run(
            ["git", "-C", str(cwd or self.repository), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    @functools.cached_property
    def _current(self) -> Candidate:
        rev = self._git("stash", "create") or self._git("rev-parse", "HEAD")
        return Candidate(rev, "the release operations runs")

    def current(self) -> Candidate:
        """The revision operations runs: the checkout as it is (its uncommitted changes to tracked files
        included, as `git stash create` records them without touching the working tree), else HEAD. Once
        per session: each `git stash create` makes a new commit."""
        return self._current

    def with_setting(self, path: str, name: str, value: str) -> Candidate:
        """A commit on top of the current revision that changes one module constant: `NAME = value`."""
        base = self.current().revision
        tree = self.work / f"candidate-{name.lower()}-{value}"
        subprocess.run(
            ["git", "-C", str(self.repository), "worktree", "add", "--detach", "--force", str(tree), base],
            capture_output=True,
            text=True,
            check=True,
        )
        try:
            source = (tree / path).read_text()
            changed, n = re.subn(
                rf"^{re.escape(name)} = [^#\n]*?(\s*#|\n)",
                rf"{name} = {value}\1",
                source,
                count=1,
                flags=re.M,
            )
            assert n == 1, f"{path} defines no {name}"
            (tree / path).write_text(changed)
            self._git(
                "-c",
                "user.name=release gate",
                "-c",
                "user.email=gate@soc.invalid",
                "commit",
                "-q",
                "-a",
                "-m",
                f"candidate: {name} = {value}",
                cwd=tree,
            )
            rev = self._git("rev-parse", "HEAD", cwd=tree)
        finally:
            subprocess.run(
                ["git", "-C", str(self.repository), "worktree", "remove", "--force", str(tree)],
                capture_output=True,
                text=True,
            )
        return Candidate(rev, f"{name} = {value} in {path}")

    def deploy(self, candidate: Candidate, timeout: float) -> None:
        run = run_playbook(
            "candidate.yml",
            "-e",
            f"candidate_revision={candidate.revision}",
            "-e",
            f"candidate_repository={self.repository}",
            timeout=timeout,
        )
        assert run.returncode == 0, playbook_failure(run)
        self.deployed = candidate

    def restore(self) -> None:
        if self.deployed is not None and self.deployed.revision != self.current().revision:
            self.deploy(self.current(), 900)


@pytest.fixture(scope="session")
def candidates(request, work):
    c = Candidates(request.config.rootpath, work)
    yield c
    c.restore()


@given("a candidate release built from the git revision operations runs")
def candidate_current(candidates, ctx):
    ctx.candidate = candidates.current()
    ctx.set_name = "identical-release day"


@given(
    parsers.parse(
        "a candidate release built from a git revision that sets the image parameters' {name} to {value}"
    )
)
def candidate_changed(candidates, ctx, name, value):
    ctx.candidate = candidates.with_setting(IMAGE_PARAMETERS, name, value)
    ctx.set_name = "changed-release day"


@when(parsers.parse("the candidate is deployed to validation within {seconds:d} seconds"))
def candidate_deployed(candidates, ctx, seconds):
    candidates.deploy(ctx.candidate, seconds)


@when("a day of telemetry for the gate is delivered to the incoming directory")
def gate_day_delivered(harness, telemetry, ctx):
    ctx.set = telemetry(ctx.set_name)
    ctx.names = harness.deliver(ctx.set.files)


@then("both environments reduced the chunks of the day")
def day_reduced(harness, ctx):
    """The gate compares something: chunk revisions of the day's telemetry were made in both (the chunks
    made since the clone; a set too short to make any due would pass any candidate)."""
    made = {}
    for env in ("operations", "validation"):
        rows = harness.env[env].query("SELECT chunk_id, revision FROM chunks")
        made[env] = set(rows) - harness.clone.revisions
    assert made["operations"] and made["operations"] == made["validation"], made


def _gate(harness, ctx):
    if ctx.result is None:
        ctx.result = harness.compare(f"release gate {ctx.set_name}")
    return ctx.result


@then("the gate passes: the Main Databases and chunk products of operations and validation are identical")
def gate_passes(harness, ctx):
    from steps.environments import describe

    result = _gate(harness, ctx)
    assert result.manifests is not None and result.manifests.ops_rows, "no chunk product was compared"
    assert result.identical, f"{ctx.candidate.what}: the gate fails\n{describe(result)}"


@then("the gate fails, with differences in the science area")
def gate_fails(harness, ctx):
    result = _gate(harness, ctx)
    assert not result.identical, f"{ctx.candidate.what}: the gate passed"
    assert "science" in result.by_area(), result.by_area()


@then("the report shows changed fluxes of transits, each with its key and both values")
def report_fluxes(harness, ctx):
    t = ctx.result.table("transits")
    assert t.changed and t.changed_by_column.get("g_flux"), t.changed_by_column
    rows = [r for r in t.rows if r.kind == "changed"]
    assert rows and all(set(r.key) == set(t.key) for r in rows), t.key
    flux = [v for r in rows for v in r.values if v.column == "g_flux"]
    assert flux and all(v.ops is not None and v.val is not None and v.ops != v.val for v in flux)
    page = next(harness.reports.glob("compare-release-gate-changed-release-day.html")).read_text()
    assert "Differences by area" in page and "g_flux" in page


@then("the intake area has no difference: the candidate changed what was computed, not what was received")
def intake_same(ctx):
    assert "intake" not in ctx.result.by_area(), ctx.result.by_area()
