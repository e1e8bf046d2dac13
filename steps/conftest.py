"""Step definitions of the acceptance features (features/*.feature), shared by every feature, and the
fixtures that do the process control (steps/environments.py, steps/telemetry.py).

Run as root on the machine of the local topology (soc-clone and the superuser queries need it):

    pytest steps --cucumberjson=reports/cucumber.json --junitxml=reports/acceptance.xml

The topology's variables come from the Ansible inventory (tests/infra/conftest.py: `topology`, the same
fixture as the testinfra suite), `SOC_INVENTORY` choosing another one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest
from pytest_bdd import given, parsers, then, when
from pytest_bdd.scenario import scenario_wrapper_template_registry

from pipeline.alerts.gaia_lightcurves import lightcurve_paths, read_lightcurve
from pipeline.alerts.realdata import replay_all
from pipeline.alerts.recall import Truth, deployment_visits
from pipeline.alerts.thresholds import load_thresholds
from pipeline.chunks import horizon
from steps.environments import Harness, describe
from steps.release_gate import *  # noqa: F403  (the release gate's steps and fixtures)
from steps.replication import *  # noqa: F403  (the replication feature's steps and fixtures)
from steps.telemetry import SCENARIO_SETS, SETS, SIZES, DayAllocator, TelemetrySet, make_set, sets_of_size
from tests.infra.conftest import live_primary, superuser_query, topology  # noqa: F401  (the fixture)

OUTLINE_SETS = pytest.StashKey[list]()
SESSION_SETS = pytest.StashKey[list]()
INTAKE_TABLES = ["deliveries", "packet_ledger", "quarantine", "raw_packets"]


def pytest_addoption(parser):
    parser.addoption(
        "--telemetry-size", choices=SIZES, default="full",
        help="the telemetry sets' size: full (make acceptance, Jenkins) or small (make test, within the CI"
        " budget); steps/telemetry.py",
    )  # fmt: skip


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The telemetry sets of the selected examples of validation_vs_operations (delivered together), and
    every set the selected scenarios replay, in the order they run (simulated ahead: `telemetry`)."""
    outline: list[str] = []
    session: list[str] = []
    for item in items:
        example = getattr(getattr(item, "callspec", None), "params", {}).get("_pytest_bdd_example") or {}
        if example.get("telemetry") in SETS and example["telemetry"] not in outline:
            outline.append(example["telemetry"])
        scenario = scenario_wrapper_template_registry.get(getattr(item, "obj", None))
        for name in [example.get("telemetry"), *SCENARIO_SETS.get(getattr(scenario, "name", ""), ())]:
            if name in SETS and name not in session:
                session.append(name)
    config.stash[OUTLINE_SETS] = outline
    config.stash[SESSION_SETS] = session


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def harness(topology, request, work) -> Harness:  # noqa: F811
    return Harness(topology, request.config.rootpath / "reports", work / "compare")


@pytest.fixture(scope="session")
def work(request) -> Path:
    """The session's files (simulated telemetry, manifests compared) under var/acceptance/ of the
    repository, not pytest's temporary directories (another pytest session on the machine prunes those).
    The previous sessions' files are removed: their days are delivered, no later session uses them."""
    base = request.config.rootpath / "var" / "acceptance"
    for old in base.glob("[0-9]*T[0-9]*"):
        shutil.rmtree(old, ignore_errors=True)
    root = base / time.strftime("%Y%m%dT%H%M%S")
    root.mkdir(parents=True)
    return root


# Sets simulated at a time ahead of the scenarios, at a lower CPU priority than the environments' services:
# they use the CPU the scenarios leave idle (a clone's take, a playbook, a comparison) and are ready when a
# scenario comes to them.
AHEAD_WORKERS = 2
AHEAD_NICE = 5


def _ahead_init() -> None:
    """A simulating process's priority: its own nice, and (with the kernel's autogroup scheduling, where
    each session shares the CPU as one group whatever its processes' nice) a session of its own whose group
    has that nice, as the Makefile gives the unit tests."""
    os.nice(AHEAD_NICE)
    os.setsid()
    try:
        Path("/proc/self/autogroup").write_text(f"{AHEAD_NICE}\n")
    except OSError:
        pass  # no autogroups: the nice is enough


@pytest.fixture(scope="session", autouse=True)
def telemetry(harness, work, request):
    """telemetry(name) -> TelemetrySet: simulated once per session, on days operations has none of, at
    the session's --telemetry-size. The sets of the selected scenarios get their days at the session's
    start, in the order the scenarios run, and are simulated from then on (autouse: while the first clone
    is taken too), in that order, beside the scenarios."""
    specs = sets_of_size(request.config.getoption("--telemetry-size"))
    settings = dict(harness.primary_query("SELECT key, value FROM soc_settings"))
    allocator = DayAllocator({n for (n,) in harness.primary_query("SELECT file_name FROM deliveries")},
                             int(settings["catalogue_seed"]))  # fmt: skip
    out = work / "telemetry"
    out.mkdir()
    scale = float(settings["catalogue_scale"])
    days = {name: allocator.take(specs[name]) for name in request.config.stash[SESSION_SETS]}
    ahead_pool = ProcessPoolExecutor(AHEAD_WORKERS, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_ahead_init)  # fmt: skip
    ahead = {
        name: ahead_pool.submit(make_set, name, specs[name], day, allocator.seed, scale, out)
        for name, day in days.items()
    }
    made: dict[str, TelemetrySet] = {}

    def get(name: str) -> TelemetrySet:
        if name not in made:
            if name in ahead:
                made[name] = ahead[name].result()
            else:  # a set no scenario declares (SCENARIO_SETS): simulated now
                day = allocator.take(specs[name])
                made[name] = make_set(name, specs[name], day, allocator.seed, scale, out)
        return made[name]

    yield get
    ahead_pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def session_clone(harness):
    """One clone for the comparison of validation with operations, taken before the session's first
    replay: every example's telemetry then goes through both environments from the same state."""
    return harness.take_clone()


@pytest.fixture(scope="session")
def replayed_sets(harness, session_clone, telemetry, request) -> dict[str, TelemetrySet]:
    """Every telemetry set of the selected examples, delivered once, in the order of their days."""
    sets = sorted((telemetry(n) for n in request.config.stash[OUTLINE_SETS]), key=lambda s: s.day)
    for s in sets:
        harness.deliver(s.files)
    return {s.name: s for s in sets}


@pytest.fixture(scope="session")
def gaia_replay() -> dict[str, dict]:
    """The real Gaia light curves, each replayed visit by visit through `evaluate` (realdata)."""
    return {row["name"]: row for row in replay_all()}


@pytest.fixture
def ctx(request) -> SimpleNamespace:
    """What a scenario's steps hand on: the telemetry set, the names delivered, results."""
    example = getattr(getattr(request.node, "callspec", None), "params", {}).get("_pytest_bdd_example", {})
    return SimpleNamespace(set=None, names=[], held=None, example=example, result=None, alerts=None)


# ------------------------------------------------------------------------------------------ background
@given("the local topology is provisioned")
def topology_is_provisioned(harness):
    primary = live_primary(harness.topology)
    assert superuser_query(harness.topology, primary, "SELECT count(*) FROM schema_migrations")[0][0] != "0"
    for env in harness.env.values():
        assert env.config_path.exists(), f"{env.name}: no configuration {env.config_path}"
        env.query("SELECT 1 FROM soc_settings LIMIT 1")


@given("a clone of operations has been taken for validation")
def clone_taken(session_clone):
    assert session_clone.summary["verify"]["ok"], session_clone.summary


# ------------------------------------------------------------------------------------------- telemetry
@when(parsers.parse("the {name} is delivered to the incoming directory"))
def outline_set_delivered(name, replayed_sets, ctx):
    assert name in replayed_sets, f"{name}: not among the sets delivered ({list(replayed_sets)})"
    ctx.set = replayed_sets[name]
    ctx.names = ctx.set.names


@then(parsers.re(r"(?P<env>operations|validation) has ingested and reduced every (?:delivery of (?:the )?"
                 r"(?P<what>.+?)|delivered pass) within (?P<seconds>\d+) seconds"))  # fmt: skip
def processed_within(env, what, seconds, harness, ctx):
    assert ctx.names, "nothing was delivered in this scenario"
    state = harness.wait(env, ctx.names, float(seconds))
    assert state.deliveries == len(ctx.names)


@then(parsers.parse("both environments have processed every delivery of this run within {seconds:d} seconds"))
def both_quiet(seconds, harness):
    harness.wait_quiet(float(seconds))


# -------------------------------------------------------------------------------------------- compare
@when("the alerts run in operations and in validation")
def alerts_both(harness, ctx):
    ctx.alerts = harness.run_alerts(("operations", "validation"))


def _label(ctx) -> str:
    return ctx.example.get("telemetry") or (ctx.set.name if ctx.set else "comparison")


@then("the Main Database contents of operations and validation are identical")
def databases_identical(harness, ctx):
    ctx.result = harness.compare(_label(ctx))
    tables = ctx.result.tables
    assert all(not t.differences for t in tables), (
        f"operations and validation differ (report {harness.reports}/compare-*.html):\n"
        + describe(ctx.result, tables)
    )


def _tables_identical(ctx, names: list[str]):
    found = {t.table: t for t in ctx.result.all_tables}
    missing = [n for n in names if n not in found]
    assert not missing, f"not compared: {missing}"
    differing = [found[n] for n in names if found[n].differences]
    assert not differing, describe(ctx.result, differing)
    return [found[n] for n in names]


@then("their chunk manifests are identical")
def manifests_identical(ctx):
    (m,) = _tables_identical(ctx, ["manifests"])
    assert m.ops_rows and m.ops_rows == m.val_rows, (
        f"manifests: operations {m.ops_rows}, validation {m.val_rows}"
    )


@then("their health events are identical")
def health_identical(ctx):
    _tables_identical(ctx, ["health_events", "health_summary"])


@then("their alert candidates are identical")
def candidates_identical(ctx):
    _tables_identical(ctx, ["alert_candidates", "alert_transitions", "alert_run_chunks"])
    ops, val = ctx.alerts["operations"], ctx.alerts["validation"]
    assert (ops.n_candidates_new, ops.by_detector) == (val.n_candidates_new, val.by_detector), (ops, val)


# ------------------------------------------------------------------------------------ telemetry faults
def _pass_time(path: Path) -> str:
    return path.name.split("-", 1)[1]  # STATION-YYYYMMDDTHHMM[.dN].tm: the contact's start


@given("two days of telemetry with every delivery fault, the first pass held back")
def faulty_with_late_pass(harness, telemetry, ctx):
    ctx.set = telemetry("faulty days with a late pass")
    # the first pass whose chunks another pass also brings packets of (the backlog of a tight downlink),
    # chunks that the other passes make due (their horizon passes the chunk's deadline): they are reduced
    # without it, and its late arrival is new input to them
    packets = _truth(ctx, "packets")
    settings = dict(harness.primary_query("SELECT key, value FROM soc_settings"))
    chunk_s, lateness = float(settings["chunk_seconds"]), float(settings["lateness_seconds"])
    sent = packets[packets["fate"] == "delivered"]
    chunks = {p: set(np.floor(q["obt"] / chunk_s).astype(int)) for p, q in sent.groupby("pass_id") if p}

    # what operations holds, for pipeline.chunks.horizon: the newest packet of each APID (its newest star
    # packet of the lowest priority if it has any, else its newest star packet: the horizon's rule)
    held = np.array(harness.env["operations"].query("SELECT apid, max(obt) FROM raw_packets GROUP BY apid"),
                    dtype=float).reshape(-1, 2)  # fmt: skip

    def late_data_possible(f: Path) -> bool:
        others = sent[sent["pass_id"] != f.stem]
        h = horizon(np.r_[others["apid"].to_numpy(), held[:, 0]].astype(np.int64),
                    np.r_[others["obt"].to_numpy(), held[:, 1]])  # fmt: skip
        shared = chunks[f.stem] & set(np.floor(others["obt"] / chunk_s).astype(int))
        return any((c + 1) * chunk_s + lateness <= h for c in shared)

    firsts = sorted((f for f in ctx.set.files if ".d" not in f.stem), key=_pass_time)
    ctx.held = next((f for f in firsts if late_data_possible(f)), None)
    assert ctx.held, f"no pass of {ctx.set.root.name} can arrive late into reduced chunks"
    # its replays (.d2) too: a replay brings the same packets, it would not be late data
    ctx.held_files = [f for f in ctx.set.files if f.name.split(".")[0] == ctx.held.stem]


@when("every pass but the held-back one is delivered to the incoming directory")
def deliver_all_but_held(harness, ctx):
    ctx.names = harness.deliver([f for f in ctx.set.files if f not in ctx.held_files])


@when("the held-back pass is delivered late")
def deliver_held(harness, ctx):
    ctx.names += harness.deliver(ctx.held_files)


def _truth(ctx, table: str):
    return pq.read_table(ctx.set.root / "truth" / f"{table}.parquet").to_pandas()


@then("the packet ledger covers every byte of every delivered file")
def ledger_covers_bytes(harness, ctx):
    rows = dict(harness.env["operations"].query(
        "SELECT file_name, sum(length) FROM packet_ledger WHERE file_name = ANY(%s) GROUP BY 1",
        (ctx.names,)))  # fmt: skip
    sizes = {f.name: f.stat().st_size for f in ctx.set.files}
    short = {n: (rows.get(n), sizes[n]) for n in ctx.names if rows.get(n) != sizes[n]}
    assert not short, f"bytes in the ledger vs file size: {short}"


def _ledger_keys(harness, ctx, status: str) -> list[tuple]:
    return harness.env["operations"].query(
        "SELECT apid, seq, obt FROM packet_ledger WHERE file_name = ANY(%s) AND status = %s",
        (ctx.names, status),
    )


@then("every packet the ground stations received is ingested once, unless its only copies were corrupted")
def packets_ingested_once(harness, ctx):
    packets, faults = _truth(ctx, "packets"), _truth(ctx, "faults")
    ingested = _ledger_keys(harness, ctx, "ingested")
    assert len(ingested) == len(set(ingested)), "a packet ingested twice"
    delivered = packets[packets["fate"] == "delivered"]
    want = set(zip(delivered["apid"], delivered["seq"], delivered["obt"], strict=True))
    flips = faults[faults["kind"] == "bitflip"]
    flipped = set(zip(flips["apid"], flips["seq"], flips["obt"], strict=True))
    got = set(ingested)
    assert got <= want, (
        f"{len(got - want)} ingested packets the stations never received: {sorted(got - want)[:5]}"
    )
    lost = want - got
    assert lost <= flipped, (
        f"{len(lost - flipped)} received packets not ingested: {sorted(lost - flipped)[:5]}"
    )


@then("every quarantined byte range is a corrupted packet or the cut of a truncated pass")
def quarantine_explained(harness, ctx):
    faults = _truth(ctx, "faults")
    sidecars = {
        n: json.loads(Path(ctx.set.root, "passes", n).with_suffix(".json").read_text()) for n in ctx.names
    }
    rows = harness.env["operations"].query(
        "SELECT file_name, byte_offset, reason FROM quarantine WHERE file_name = ANY(%s)", (ctx.names,)
    )
    assert rows, "nothing quarantined: the set's bit flips and truncation were not seen"
    bad = []
    for name, offset, reason in rows:
        mine = faults[faults["pass_id"] == sidecars[name]["pass_id"]]
        if reason.startswith(("truncated", "unframed")):
            cut = mine.loc[mine["kind"] == "truncate", "file_offset"]
            ok = len(cut) and offset >= cut.min()
        else:
            ok = offset in set(mine.loc[mine["kind"] == "bitflip", "file_offset"])
        if not ok:
            bad.append((name, offset, reason))
    assert not bad, f"quarantined without an injected fault: {bad[:10]}"


@then("every duplicated packet and every replayed pass is recorded as a duplicate")
def duplicates_recorded(harness, ctx):
    faults = _truth(ctx, "faults")
    dups = _ledger_keys(harness, ctx, "duplicate")
    injected = int((faults["kind"] == "duplicate").sum())
    replayed = [n for n in ctx.names if ".d" in Path(n).stem]
    assert replayed, "the set has no replayed pass"
    in_replays = harness.env["operations"].query(
        "SELECT file_name, count(*) FILTER (WHERE status = 'ingested') FROM packet_ledger"
        " WHERE file_name = ANY(%s) GROUP BY 1", (replayed,))  # fmt: skip
    assert len(dups) >= injected > 0, (len(dups), injected)
    # a replayed pass brings nothing new: its packets are duplicates of the first delivery's (the copies of
    # a packet corrupted in the first delivery are the exception)
    flips = int((faults["kind"] == "bitflip").sum())
    assert all(n <= flips for _, n in in_replays), in_replays


@then("the truncated pass is flagged as shorter than its sidecar says")
def truncated_flagged(harness, ctx):
    short = harness.env["operations"].query(
        "SELECT file_name FROM deliveries WHERE file_name = ANY(%s) AND NOT size_ok", (ctx.names,)
    )
    assert short, "no delivery of the set is flagged as truncated"


def _late_revisions(harness, ctx) -> list[tuple[int, int]]:
    chunk_s = float(dict(harness.primary_query("SELECT key, value FROM soc_settings"))["chunk_seconds"])
    pass_id = json.loads(ctx.held.with_suffix(".json").read_text())["pass_id"]
    packets = _truth(ctx, "packets")
    held_chunks = sorted(
        {int(c) for c in np.floor(packets.loc[packets["pass_id"] == pass_id, "obt"] / chunk_s)}
    )
    return harness.env["operations"].query(
        "SELECT chunk_id, revision FROM chunks WHERE reason = 'late_data' AND chunk_id = ANY(%s)"
        " ORDER BY 1, 2", (held_chunks,))  # fmt: skip


@then("the late pass made new revisions of the chunks it completes, for the reason late_data")
def late_revisions(harness, ctx):
    ctx.late = _late_revisions(harness, ctx)
    assert ctx.late, f"no late_data revision of the chunks of {ctx.held.name}"
    assert all(r >= 2 for _, r in ctx.late), ctx.late


@then("the products of those chunks are re-issued, each naming the revision it supersedes")
def products_reissued(harness, ctx):
    outbox = harness.env["operations"].outbox
    bad = []
    for c, r in ctx.late:
        manifest = outbox / f"chunk-{c}-r{r}.manifest.json"
        want = f"chunk-{c}-r{r - 1}.parquet"
        got = json.loads(manifest.read_text()).get("supersedes") if manifest.exists() else "no manifest"
        if got != want:
            bad.append((manifest.name, got, want))
    assert not bad, f"re-issued products: {bad}"


# -------------------------------------------------------------------------------------------- cloning
def _ingest_rate(harness, ts: TelemetrySet) -> float:
    """Bytes per second of the intake transactions of the set (ingest_log), in operations."""
    rows = harness.env["operations"].query(
        "SELECT file_name, extract(epoch FROM finished_at - started_at) FROM ingest_log"
        " WHERE file_name = ANY(%s) AND outcome = 'ingested'", (ts.names,))  # fmt: skip
    sizes = {f.name: f.stat().st_size for f in ts.files}
    assert {n for n, _ in rows} == set(ts.names), f"not all ingested: {rows}"
    return sum(sizes[n] for n, _ in rows) / sum(float(s) for _, s in rows)


@given("a reference telemetry set has been ingested by operations, and its ingest rate measured")
def reference_rate(harness, telemetry, ctx):
    ref = telemetry("cloning reference")
    harness.deliver(ref.files)
    harness.wait("operations", ref.names, 300)
    ctx.reference_rate = _ingest_rate(harness, ref)


@when("a telemetry set of the same size is delivered to the incoming directory")
def cloning_set_delivered(harness, telemetry, ctx):
    ctx.set = telemetry("cloning")
    ctx.names = harness.deliver(ctx.set.files)


@when(parsers.parse("operations is writing it, within {seconds:d} seconds"))
def operations_writing(harness, seconds):
    writing = ("SELECT count(*) FROM pg_stat_activity WHERE usename = 'soc_pipeline' AND state = 'active'"
               " AND (query ILIKE '%COPY%' OR query ILIKE '%soc-intake%')")  # fmt: skip
    deadline = time.monotonic() + seconds
    while int(harness.primary_query(writing)[0][0]) == 0:
        assert time.monotonic() < deadline, f"operations wrote nothing within {seconds} s"
        time.sleep(0.05)


@when("a clone of operations is taken")
def clone_now(harness, ctx):
    ctx.clone = harness.take_clone()


@then(parsers.parse("the clone is ready within {seconds:d} seconds"))
def clone_ready(ctx, seconds):
    assert ctx.clone.seconds <= seconds, f"soc-clone take: {ctx.clone.seconds:.1f} s ({ctx.clone.summary})"


@then("soc-clone verified the clone: promoted on a new timeline, at or after the standby's position, "
      "catalogs and bookkeeping tables checked")  # fmt: skip
def clone_verified(harness, ctx):
    s = ctx.clone.summary
    v = s["verify"]
    assert v["ok"] and v["lsn_ok"] and not v["in_recovery"], v
    # the clone's timeline: that of the WAL it writes now (pg_control_checkpoint(), which soc-clone reports,
    # names the new timeline only after the first checkpoint since the promotion)
    host = harness.topology.groups["validation_hosts"][0]
    wal = superuser_query(harness.topology, host, "SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
    assert int(wal[:8], 16) > s["source"]["timeline"], (wal, s["source"])
    assert v["amcheck"]["ok"] and "pg_catalog" in v["amcheck"]["schemas"] and v["amcheck"]["tables"], v[
        "amcheck"
    ]


@then("every delivery in the clone holds exactly the packets operations recorded for it")
def clone_consistent(harness, ctx):
    count = "SELECT file_name, count(*), sum(length) FROM packet_ledger WHERE file_name = ANY(%s) GROUP BY 1"
    val = {n: (c, s) for n, c, s in harness.env["validation"].query(count, (ctx.names,))}
    ops = {n: (c, s) for n, c, s in harness.env["operations"].query(count, (ctx.names,))}
    assert {n: ops.get(n) for n in val} == val, (ops, val)


@then("the take is recorded in operations' eLog with its position and its time to ready")
def clone_in_elog(harness, ctx):
    rows = harness.primary_query(
        "SELECT lsn, seconds, ok FROM elog WHERE kind = 'clone' AND logged_at >= "
        f"'{ctx.clone.started_utc}+00' ORDER BY entry_id DESC LIMIT 1"
    )
    assert rows, f"no clone entry in the eLog since {ctx.clone.started_utc}"
    lsn, seconds, ok = rows[0]
    assert ok == "t" and lsn == ctx.clone.summary["verify"]["lsn"] and float(seconds) > 0, rows


@then(parsers.parse("operations ingested the set at no less than {ratio:f} of the reference rate"))
def rate_bound(harness, ctx, ratio):
    rate = _ingest_rate(harness, ctx.set)
    assert rate >= ratio * ctx.reference_rate, (
        f"ingest during the take: {rate / 1e6:.2f} MB/s, reference {ctx.reference_rate / 1e6:.2f} MB/s"
        f" ({rate / ctx.reference_rate:.2f}x, bound {ratio}x)"
    )
    print(f"ingest rate with a clone taken: {rate / ctx.reference_rate:.2f}x the reference")


@then("the intake tables of operations and validation are identical")
def intake_identical(harness, ctx):
    ctx.result = harness.compare("cloning-intake", tables=INTAKE_TABLES)
    assert ctx.result.identical, describe(ctx.result)


# --------------------------------------------------------------------------------------------- alerts
@given("a day of telemetry with injected photometric events on the working catalogue")
def events_day(telemetry, ctx):
    ctx.set = telemetry("events day")


@when(parsers.re(r"(?:it is|they are) delivered to the incoming directory"))
def deliver_it(harness, ctx):
    """The scenario's telemetry set (the Given step chose it), delivered."""
    ctx.names = harness.deliver(ctx.set.files)


@when("the alerts run in operations")
def alerts_operations(harness, ctx):
    ctx.alerts = harness.run_alerts(("operations",))


@then("the run scanned every chunk revision of the day")
def scanned_day(harness, ctx):
    chunk_s = float(dict(harness.primary_query("SELECT key, value FROM soc_settings"))["chunk_seconds"])
    packets = _truth(ctx, "packets")
    chunks = sorted({int(c) for c in np.floor(packets.loc[packets["fate"] == "delivered", "obt"] / chunk_s)})
    ops = harness.env["operations"]
    loaded = set(
        ops.query("SELECT chunk_id, revision FROM transit_chunks WHERE chunk_id = ANY(%s)", (chunks,))
    )
    scanned = set(
        ops.query("SELECT chunk_id, revision FROM alert_run_chunks WHERE chunk_id = ANY(%s)", (chunks,))
    )
    assert loaded, "no chunk of the day was loaded"
    assert loaded <= scanned, f"not scanned: {sorted(loaded - scanned)}"
    ctx.revisions = sorted(loaded)


COUNTABLE = ("eligible", "not_detectable_yet")  # pipeline.alerts.recall's categories
MIN_EVENT_VISITS = 20  # a recall measured on fewer says little
EVENTS_RECALLED = (
    "at least {percent:d} percent of the visits where an injected event changed every transit of a source by"
    " 1 magnitude or more, at G 19 or brighter, on both fields of view, have a candidate"
)


@then(parsers.parse(EVENTS_RECALLED))
def events_recalled(harness, ctx, percent):
    """The visits of pipeline.alerts.recall (a source's transits in this run, matched to the simulator's
    truth), eligible (a history to compare with) or not detectable yet (the catalogue G instead)."""
    with psycopg.connect(harness.env["operations"].write_dsn) as conn:
        ctx.visits = deployment_visits(conn, ctx.revisions, Truth.read(ctx.set.root), load_thresholds())
    countable = ctx.visits[ctx.visits["category"].isin(COUNTABLE)]
    missed = countable.loc[~countable["recalled"], ["source", "kind", "g_visit", "dm", "rejected_by"]]
    print(f"injected events recalled: {int(countable['recalled'].sum())} of {len(countable)} visits")
    assert len(countable) >= MIN_EVENT_VISITS, (
        f"{len(countable)} visits to count (fewer than {MIN_EVENT_VISITS}): raise the events day's event rate"
    )
    assert countable["recalled"].mean() * 100 >= percent, (
        f"{len(missed)} of {len(countable)} visits have no candidate: {missed.head(20).to_dict('records')}"
    )


@then("every candidate on those visits is of the direction of the change")
def candidates_direction(ctx):
    """Brighter (delta-m < 0) is brightening, fainter is fading; a new source is new_source. (On other visits
    of an event a change against the source's history can go the other way: a supernova's decline, an R CrB
    star's recovery.)"""
    v = ctx.visits[ctx.visits["category"].isin(COUNTABLE) & ctx.visits["raised"]]
    want = np.where(v["kind"] == "new_source", "new_source", np.where(v["dm"] < 0, "brightening", "fading"))
    wrong = v.loc[v["detector"].to_numpy() != want, ["source", "kind", "dm", "detector"]]
    assert wrong.empty, f"candidates against the direction of the change:\n{wrong}"


@given(
    parsers.re(r"the light curve of (?P<alert>Gaia\w+), (?P<what>.+), from the Gaia Science Alerts archive")
)
def gaia_lightcurve(alert, ctx):
    paths = {p.stem: p for p in lightcurve_paths()}
    assert alert in paths, f"{alert}: no light curve in the archive"
    ctx.lightcurve = read_lightcurve(paths[alert])
    assert len(ctx.lightcurve.t) > 10


@when("it is replayed visit by visit through the alerts' evaluation")
def replay_lightcurve(gaia_replay, ctx):
    ctx.row = gaia_replay[ctx.lightcurve.name]


@then(
    parsers.re(
        r"an? (?P<detector>\w+) candidate is raised at the visit of the published alert (?P<alert>\w+)"
    )
)
def raised_at_gaia_visit(detector, alert, ctx):
    row = ctx.row
    assert row["name"] == alert
    assert (row["category"], row["detector"]) == ("same", detector), row


@then("no candidate is raised at any visit before it")
def not_before(ctx):
    assert ctx.row["n_raised_before"] == 0, ctx.row
