"""Process control of the acceptance runs on a provisioned topology: the two environments (operations,
validation) as their own configuration files describe them, delivering telemetry into the incoming
directory, waiting for each environment, taking a clone, running the alerts, comparing.

Used by the fixtures of steps/conftest.py; the steps only call these and assert.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from pipeline.alerts.run import RunReport, run_alerts
from pipeline.compare import CompareResult, TableResult, compare
from pipeline.compare.report import write_html, write_json
from pipeline.config import load
from pipeline.distribute import list_products
from pipeline.landing import deliver
from pipeline.replay import Processed, wait_processed
from tests.infra.conftest import Topology, live_primary, superuser_query


@dataclass(frozen=True)
class Environment:
    """One environment's pipeline: its configuration file, as its services read it."""

    name: str  # operations | validation
    config_path: Path

    @property
    def config(self):
        return load(self.config_path)

    @property
    def write_dsn(self) -> str:
        return self.config.write_dsn

    @property
    def read_dsn(self) -> str:
        return self.config.read_dsn or self.config.write_dsn

    @property
    def outbox(self) -> Path:
        return Path(self.config.outbox)

    def query(self, sql: str, params=()) -> list[tuple]:
        with psycopg.connect(self.write_dsn, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()


def active_reduction(topology: Topology) -> str:
    """The active reduction host, as the last reduction.yml run recorded it (docs/deployment.md)."""
    deployment = topology.var(topology.any_host, "soc_deployment")
    state = Path.home() / ".local/share/soc-pipeline/state" / deployment / "active-reduction"
    return state.read_text().strip() if state.exists() else topology.groups["reduction"][0]


def environments(topology: Topology) -> dict[str, Environment]:
    ops = active_reduction(topology)
    val = topology.groups["validation_hosts"][0]
    return {
        name: Environment(name, Path(topology.var(host, "soc_etc_dir")) / "soc.yaml")
        for name, host in (("operations", ops), ("validation", val))
    }


@dataclass
class Clone:
    """A take of soc-clone: its JSON summary, the wall time, and the chunk revisions it started with."""

    summary: dict
    seconds: float
    started_utc: str
    revisions: set[tuple[int, int]] = field(default_factory=set)


class Harness:
    """The session's dealings with the topology. Every delivery is recorded, so that a scenario can wait
    until both environments are quiet (every delivery of the session processed) before comparing."""

    def __init__(self, topology: Topology, reports: Path, work: Path):
        self.topology = topology
        self.env = environments(topology)
        self.incoming = Path(topology.var(active_reduction(topology), "soc_incoming_dir"))
        self.reports = reports
        self.work = work
        self.delivered: list[str] = []
        self.clone: Clone | None = None
        self.generation = 0  # bumped by every delivery, alerts run and clone: the comparison's cache key
        self._compared: dict[tuple, CompareResult] = {}
        self._alerts: dict[int, dict[str, RunReport | None]] = {}

    # --------------------------------------------------------------------------------------- telemetry
    def primary_query(self, sql: str) -> list[list[str]]:
        return superuser_query(self.topology, live_primary(self.topology), sql)

    def deliver(self, files: list[Path]) -> list[str]:
        names = deliver(files, self.incoming)
        self.delivered += [n for n in names if n not in self.delivered]
        self.generation += 1
        return names

    def wait(self, env: str, names: list[str], timeout: float) -> Processed:
        return wait_processed(self.env[env].write_dsn, names, timeout=timeout, interval=1.0)

    def wait_quiet(self, timeout: float) -> None:
        """Both environments have processed every delivery of this session."""
        deadline = time.monotonic() + timeout
        for env in ("operations", "validation"):
            self.wait(env, self.delivered, max(1.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------------------------------ clones
    def _validation_service(self, action: str) -> None:
        host = self.topology.groups["validation_hosts"][0]
        name = self.topology.var(host, "soc_service_name")
        run = subprocess.run(["service", name, action], capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            raise AssertionError(f"service {name} {action}: {run.stdout[-500:]} {run.stderr[-1000:]}")

    def take_clone(self, timeout: float = 600) -> Clone:
        """soc-clone take on the validation host (this machine): docs/validation.md.

        Validation's watcher is stopped for the take and started after it, as an operator replaces the
        database under a service: it would otherwise wait out the new clone's promotion (it retries a
        database that does not take writes yet), and its first reduction would race the take's checks."""
        tool = shutil.which("soc-clone") or "/usr/local/sbin/soc-clone"
        self._validation_service("stop")
        started = time.time()
        t0 = time.monotonic()
        try:
            run = subprocess.run([tool, "take"], capture_output=True, text=True, timeout=timeout)
        finally:
            seconds = time.monotonic() - t0
            self._validation_service("start")
        if run.returncode != 0:
            raise AssertionError(f"soc-clone take failed ({run.returncode}): {run.stderr[-3000:]}")
        summary = json.loads(run.stdout)
        val = self.env["validation"]
        revisions = set(val.query("SELECT chunk_id, revision FROM chunks"))
        self.clone = Clone(summary, seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
                           revisions)  # fmt: skip
        self.generation += 1
        return self.clone

    # ------------------------------------------------------------------------------------------ alerts
    def run_alerts(self, envs: tuple[str, ...]) -> dict[str, RunReport]:
        """One alerts run in each environment, side by side (once per state of the topology)."""
        key = self.generation
        if key in self._alerts and set(envs) <= set(self._alerts[key]):
            return self._alerts[key]
        reports: dict[str, RunReport] = {}
        errors: dict[str, BaseException] = {}

        def one(name: str) -> None:
            e = self.env[name]
            try:
                reports[name] = run_alerts(e.write_dsn, e.read_dsn, workers=2)
            except BaseException as exc:  # reported below, with the environment named
                errors[name] = exc

        threads = [threading.Thread(target=one, args=(n,)) for n in envs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise AssertionError("; ".join(f"alerts run in {n}: {e!r}" for n, e in errors.items()))
        self.generation += 1
        self._alerts[self.generation] = reports
        return reports

    # ---------------------------------------------------------------------------------------- compare
    def _manifest_dirs(self) -> tuple[Path, Path]:
        """The manifests of the chunk revisions made since the clone, one directory per environment
        (links): what the outboxes held before the clone was made by other clones and runs."""
        base = self.clone.revisions if self.clone else set()
        now = set(self.env["operations"].query("SELECT chunk_id, revision FROM chunks"))
        dirs = []
        for name in ("operations", "validation"):
            d = self.work / f"manifests-{self.generation}-{name}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            for ref in list_products(self.env[name].outbox):
                if (ref.chunk_id, ref.revision) in now - base:
                    (d / ref.manifest.name).symlink_to(ref.manifest)
            dirs.append(d)
        return dirs[0], dirs[1]

    def compare(self, label: str, tables: list[str] | None = None) -> CompareResult:
        """soc compare of operations and validation (pipeline.compare), with the manifests of the chunk
        revisions made since the clone; the reports go to reports/compare-<label>.html and .json. One
        comparison per state of the topology and set of tables: later examples reuse it."""
        key = (self.generation, tuple(tables or ()))
        if key not in self._compared:
            ops, val = self.env["operations"], self.env["validation"]
            manifests = None if tables else self._manifest_dirs()
            self._compared[key] = compare(ops.write_dsn, val.write_dsn, tables=tables, manifests=manifests)
        result = self._compared[key]
        self.reports.mkdir(parents=True, exist_ok=True)
        slug = "".join(c if c.isalnum() else "-" for c in label).strip("-")
        write_html(result, self.reports / f"compare-{slug}.html")
        write_json(result, self.reports / f"compare-{slug}.json")
        return result


def describe(result: CompareResult, tables: list[TableResult] | None = None, limit: int = 30) -> str:
    """The differences as an assertion shows them: per table the counts, then each listed row with its key,
    and for each differing column both values."""
    lines = []
    for t in tables if tables is not None else result.all_tables:
        if not t.differences:
            continue
        lines.append(
            f"{t.table}: {t.only_ops} missing in validation, {t.only_val} missing in operations,"
            f" {t.changed} changed {dict(t.changed_by_column) or ''} (rows: operations {t.ops_rows},"
            f" validation {t.val_rows})"
        )
        lines += [f"  schema: {s}" for s in t.schema]
        for r in t.rows[:limit]:
            key = ", ".join(f"{k}={v}" for k, v in r.key.items())
            if r.kind == "changed":
                for v in r.values:
                    lines.append(f"  {t.table} [{key}] {v.column}: operations={v.ops!r} validation={v.val!r}")
            else:
                where = "only in operations" if r.kind == "only_ops" else "only in validation"
                lines.append(f"  {t.table} [{key}] {where}")
        if len(t.rows) > limit:
            lines.append(f"  ... {len(t.rows) - limit} more listed in the report")
    return "\n".join(lines)
