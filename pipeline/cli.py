"""The `soc` command."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import __version__

if TYPE_CHECKING:  # the commands import what they use when they run: `soc --help` stays quick
    from pipeline.chunks import ReductionPool


def _kinds(value: str, known: tuple[str, ...]) -> tuple[str, ...]:
    if value in ("", "none"):
        return ()
    if value == "all":
        return known
    kinds = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [k for k in kinds if k not in known]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown: {', '.join(bad)} (known: {', '.join(known)}, all, none)")
    return kinds


def _cmd_simulate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline.simulate.run import SimConfig, simulate

    cfg = SimConfig(
        start=args.start,
        days=args.days,
        scale=args.scale,
        seed=args.seed,
        faults=args.faults,
        anomalies=args.anomalies,
        event_rate=args.event_rate,
        progress=not args.no_progress,
    )
    summary = simulate(Path(args.out), cfg)
    table = Table(title=f"simulated {summary['start_utc']} .. {summary['end_utc']} (scale {args.scale})")
    table.add_column("what")
    table.add_column("count", justify="right")
    for k, v in summary["counts"].items():
        table.add_row(k, f"{v:,}")
    table.add_row("bytes delivered", f"{summary['bytes_delivered']:,}")
    table.add_row("left on board", f"{summary['onboard_at_end']['packets']:,} packets")
    for k, v in summary["faults"].items():
        if v:
            table.add_row(f"fault: {k}", f"{v:,}")
    table.add_row("anomalies", ", ".join(summary["anomalies"]) or "none")
    table.add_row("events", f"{summary['events']:,}")
    table.add_row("elapsed", f"{summary['elapsed_s']} s")
    Console().print(table)
    print(f"telemetry in {Path(args.out) / 'passes'}, truth in {Path(args.out) / 'truth'}")
    if not args.no_report:
        from pipeline.simulate.report import write_report

        print(f"overview: {write_report(Path(args.out))}")
    return 0


def _dsn(args: argparse.Namespace, read: bool = False) -> str:
    """The primary's DSN (or, for reads, the replica's): --dsn, else the environment, else the file."""
    from pipeline.config import load

    cfg = load(args.config)
    dsn = args.dsn or (cfg.reads if read else cfg.write_dsn)
    if not dsn:
        raise ValueError("no database: give --dsn, set SOC_WRITE_DSN, or name it in the configuration file")
    return dsn


def _cmd_db(args: argparse.Namespace) -> int:
    from pipeline.db import migrate

    if args.db_command == "init":
        wanted = {"chunk_seconds": args.chunk_seconds, "healpix_order": args.healpix_order}
        optional = {"catalogue_seed": args.catalogue_seed, "catalogue_scale": args.catalogue_scale}
        wanted.update({k: v for k, v in optional.items() if v is not None})  # reduction needs both
        done = migrate.init(_dsn(args), wanted)
    else:
        done = migrate.migrate(_dsn(args))
    for mg in done:
        print(f"applied {mg.version:04d}_{mg.name}")
    print("schema up to date" if not done else f"{len(done)} migration(s) applied")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    import time

    import psycopg

    from pipeline.config import load
    from pipeline.intake import pending_files

    watch = Path(args.watch) if args.watch else None
    if args.watch == "landing":
        watch = load(args.config).landing
        if watch is None:
            raise ValueError("--watch landing: the configuration file names no landing directory")
    if not args.files and watch is None:
        raise ValueError("nothing to ingest: give pass files or --watch DIR")
    if args.reduce and watch is None:
        raise ValueError("--reduce goes with --watch (after a batch of files, run `soc reduce`)")
    outbox = (args.outbox or load(args.config).outbox) if args.reduce else None
    state = _WatchState()
    while True:
        try:
            conn = psycopg.connect(_dsn(args), autocommit=True)  # the DSN is read again at each reconnect
        except psycopg.OperationalError as exc:
            if watch is None:
                raise
            print(f"soc ingest: no database, retrying in {args.interval:g} s: {exc}", file=sys.stderr)
            time.sleep(args.interval)
            continue
        with conn:
            try:
                while True:
                    if watch is None:
                        _, failed = _ingest_files(conn, [Path(f) for f in args.files], report_all=True)
                        return 1 if failed else 0
                    # one delivery at a time, in the order they arrived, each followed by the reduction of
                    # what it made due: the chunk revisions (their reasons, gaps and horizons too) depend
                    # only on that order, not on how many deliveries each look finds (operations and
                    # validation, fed by one tee, reduce alike)
                    _reduce_in_watch(args, outbox, state)  # what a stopped watcher or lost connection left
                    # what this watcher took is known only for the database it took it into; each look
                    # checks it is still that one (a new validation clone is another database, with
                    # operations' contents of some time ago, and an idle watcher would not notice otherwise)
                    database = conn.execute(DATABASE_IDENTITY).fetchone()
                    if database != state.database:
                        state.taken.clear()
                        state.database = database
                        state.close_reduction()
                    for path in pending_files(watch, "arrival"):
                        seen = _delivery_stat(path)
                        if seen is None or state.taken.get(path.name) == seen:
                            continue  # gone meanwhile, or taken in an earlier look and not changed since
                        ingested, refused = _ingest_files(conn, [path], report_all=False)  # refusals: printed
                        if not refused:
                            state.taken[path.name] = seen
                        # new data: reduce now, even within a failed reduction's retry delay (what failed
                        # may have lacked just this data; and what is reduced must not depend on timing)
                        if ingested:
                            state.to_reduce, state.retry_at = True, 0.0
                        _reduce_in_watch(args, outbox, state)
                    time.sleep(args.interval)
            except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
                if watch is None:
                    raise
                # the server went away (a failover, a restart), or the DSN reaches a server that does not
                # take writes yet (a standby still being promoted: a new validation clone): the file in
                # flight was rolled back whole
                print(f"soc ingest: lost the database, reconnecting: {exc}", file=sys.stderr, flush=True)
                state.to_reduce = True
                time.sleep(args.interval)


def _ingest_files(conn, files: list[Path], report_all: bool) -> tuple[bool, int]:
    """Ingest each file (one transaction each) -> (anything new ingested, files refused)."""
    from pipeline.intake import IntakeError, ingest_file

    ingested, failed = False, 0
    for path in files:
        try:
            r = ingest_file(conn, path)
        except IntakeError as exc:
            print(f"soc ingest: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if r.outcome == "ingested" or report_all:
            ingested = True
            print(
                f"{r.file_name}: {r.outcome}: {r.ingested} ingested, {r.duplicate} duplicate, "
                f"{r.quarantined} quarantined"
                + ("" if r.size_ok else " (file shorter than its sidecar says)"),
                flush=True,
            )
    return ingested, failed


REDUCE_RETRY_S = 60.0


@dataclass
class _WatchState:
    to_reduce: bool = True  # reduce once at start: catch up on what a stopped watcher left due
    retry_at: float = 0.0  # after a failed reduction: not before this time (time.monotonic)
    # deliveries ingested (or found ingested) into `database`: name -> _delivery_stat. Not read and hashed
    # again at every look while they stay in the landing; another database takes each once more
    taken: dict[str, tuple] = field(default_factory=dict)
    database: tuple | None = None  # DATABASE_IDENTITY of the database `taken` refers to
    # the reduction's worker processes, kept from one reduction to the next while the DSN and the database
    # stay the same (pipeline.chunks.ReductionPool)
    reduction: ReductionPool | None = None

    def close_reduction(self) -> None:
        if self.reduction is not None:
            self.reduction.close()
            self.reduction = None


# The database a watcher writes to: its server's start (a clone is a server of its own) and its oid.
DATABASE_IDENTITY = (
    "SELECT pg_postmaster_start_time(), oid FROM pg_database WHERE datname = current_database()"
)


def _delivery_stat(path: Path) -> tuple | None:
    """(size, mtime) of a delivery's data file and sidecar: a changed file is taken again (and refused by
    intake if its content differs from what was ingested under that name). None: removed meanwhile."""
    try:
        return tuple((st.st_size, st.st_mtime_ns) for st in (path.stat(), path.with_suffix(".json").stat()))
    except FileNotFoundError:
        return None


def _reduce_in_watch(args: argparse.Namespace, outbox: Path | None, state: _WatchState) -> None:
    """`soc ingest --watch --reduce`: reduce what the new data made due, if anything may be.

    Chunks become due only when data arrives (deadlines are in on-board time), so reducing after each
    delivery that ingested something reduces every due chunk. A failed reduction is reported and retried
    after --retry-after seconds (REDUCE_RETRY_S), or at once after a delivery that ingests something;
    intake goes on meanwhile (telemetry is never held up by a reduction problem).
    """
    import time

    if not (args.reduce and state.to_reduce and time.monotonic() >= state.retry_at):
        return
    dsn = _dsn(args)
    if state.reduction is not None and state.reduction.dsn != dsn:
        state.close_reduction()
    if state.reduction is None:
        state.reduction = _reduction_pool(dsn, str(outbox) if outbox else None, args.workers)
    try:
        done = state.reduction.reduce_due()
    except Exception as exc:  # a long-running service: report, keep ingesting, retry later
        print(f"soc ingest: reduction failed, retrying in {args.retry_after:g} s: {exc!r}", file=sys.stderr)
        state.retry_at = time.monotonic() + args.retry_after
        return
    for chunk_id, revision, reason in done:
        print(f"chunk {chunk_id} revision {revision} ({reason})")
    if done:
        print(f"{len(done)} chunk revision(s) reduced", flush=True)
    state.to_reduce, state.retry_at = False, 0.0


def _cmd_tee(args: argparse.Namespace) -> int:
    from pipeline.landing import Tee

    tee = Tee(Path(args.incoming), [Path(t) for t in args.to], Path(args.state) if args.state else None)
    if not args.once:
        tee.watch(args.interval)
    r = tee.run_once()
    for stem, target in r.copied:
        print(f"{stem}: copied to {target}")
    for stem, target in r.recorded:
        print(f"{stem}: already complete in {target}, recorded")
    for msg in r.refused:
        print(f"soc tee: refused: {msg}", file=sys.stderr)
    for msg in r.errors:
        print(f"soc tee: error: {msg}", file=sys.stderr)
    print(f"{len(r.copied)} copy(ies) made")
    return 1 if r.refused or r.errors else 0


def _cmd_local_db(args: argparse.Namespace) -> int:
    import psycopg

    from pipeline.db.server import LocalServer

    server = LocalServer(Path(args.dir).resolve())
    if args.action == "start":
        server.start()
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (args.dbname,)).fetchone():
                conn.execute(f'CREATE DATABASE "{args.dbname}"')
        print(server.dsn(args.dbname))
    elif args.action == "stop":
        server.stop()
    else:
        print(server.dsn(args.dbname))
    return 0


def _reduction_pool(dsn: str, outbox: str | None, workers: int | None = None) -> ReductionPool:
    import functools
    import os

    from pipeline.chunks import ReductionPool
    from pipeline.reduction import make_reducer

    workers = workers or os.cpu_count() or 1  # one worker per core
    return ReductionPool(dsn, functools.partial(make_reducer, outbox=outbox), workers)


def _reduce(dsn: str, outbox: str | None, workers: int | None = None, flush: bool = False) -> list:
    with _reduction_pool(dsn, outbox, workers) as pool:
        return pool.reduce_due(flush)


def _cmd_reduce(args: argparse.Namespace) -> int:
    from pipeline.config import load

    outbox = args.outbox or load(args.config).outbox
    done = _reduce(_dsn(args), str(outbox) if outbox else None, args.workers, args.flush)
    for chunk_id, revision, reason in done:
        print(f"chunk {chunk_id} revision {revision} ({reason})")
    print(f"{len(done)} chunk revision(s) reduced")
    return 0


def _health_report(dsn: str, date: str, out: Path) -> tuple[int, int]:
    import psycopg

    from pipeline.mission_time import DAY_S, from_utc, obt_of
    from pipeline.reduction import health_report

    t0 = float(from_utc(date))
    with psycopg.connect(dsn) as conn:
        return health_report(
            conn, float(obt_of(t0)), float(obt_of(t0 + DAY_S)), out, f"Payload health {date}"
        )


def _cmd_verify_product(args: argparse.Namespace) -> int:
    from pipeline.distribute import main_verify

    return main_verify(args.argv)


def _cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out or f"health-{args.date}.html")
    chunks, events = _health_report(_dsn(args, read=True), args.date, out)
    print(f"{out}: {chunks} chunks, {events} events")
    return 0


def _cmd_run_day(args: argparse.Namespace) -> int:
    import psycopg

    from pipeline.db import migrate
    from pipeline.intake import ingest_file, pending_files
    from pipeline.progress import progress_bar
    from pipeline.simulate.downlink import FAULT_KINDS
    from pipeline.simulate.payload import ANOMALY_KINDS
    from pipeline.simulate.run import SimConfig, simulate

    dsn = _dsn(args)
    out = Path(args.workdir) / f"sim-{args.date}"
    if not args.deliver_to:  # a deployed environment has its schema from its deployment
        migrate.init(dsn, {"catalogue_seed": args.seed, "catalogue_scale": args.scale})
    cfg = SimConfig(start=args.date, days=1.0, scale=args.scale, seed=args.seed, faults=FAULT_KINDS,
                    anomalies=ANOMALY_KINDS, progress=not args.no_progress)  # fmt: skip
    summary = simulate(out, cfg)
    counts = summary["counts"]
    print(f"simulated {counts['transits']:,} transits in {counts['deliveries']} deliveries")
    files = pending_files(out / "passes")
    if args.deliver_to:
        return _deliver_and_wait(args, dsn, files, out)
    totals = {"ingested": 0, "duplicate": 0, "quarantined": 0}
    seen: set[str] = set()
    with psycopg.connect(dsn, autocommit=True) as conn, progress_bar(not args.no_progress) as bar:
        task = bar.add_task("ingesting", total=len(files))
        for f in files:
            r = ingest_file(conn, f)
            if r.outcome == "already_ingested":
                seen.add(f.name)
            for k in totals:
                totals[k] += getattr(r, k)
            bar.update(task, advance=1, description=f"ingesting {f.name}")
    again = sum(1 for f in files if f.name in seen)
    print(f"{len(files)} files: " + ", ".join(f"{v:,} packets {k}" for k, v in totals.items())
          + (f" ({again} file(s) ingested before, skipped)" if again else ""))  # fmt: skip
    outbox = Path(args.workdir) / "outbox"
    done = _reduce(dsn, str(outbox))
    print(f"reduced {len(done)} chunk revision(s); products in {outbox}")
    report = Path(args.workdir) / f"health-{args.date}.html"
    chunks, events = _health_report(dsn, args.date, report)
    print(f"health report: {report} ({chunks} chunks, {events} events)")
    return 0


def _deliver_and_wait(args: argparse.Namespace, dsn: str, files: list[Path], out: Path) -> int:
    """run-day through a deployed environment: deliver into its incoming directory, let its services
    ingest and reduce, wait until its database has every delivery and no chunk due, report health."""
    from pipeline.landing import deliver

    names = deliver(files, Path(args.deliver_to))
    (out / "delivered.txt").write_text("".join(f"{n}\n" for n in names))
    print(f"delivered {len(names)} pass files into {args.deliver_to}")
    _check_catalogue(dsn, args.seed, args.scale)
    state = _wait_with_progress(dsn, names, args.timeout, not args.no_progress)
    print(f"{state.deliveries} deliveries ingested, {state.revisions} chunk revisions, none due")
    report = Path(args.workdir) / f"health-{args.date}.html"
    chunks, events = _health_report(_dsn(args, read=True), args.date, report)
    print(f"health report: {report} ({chunks} chunks, {events} events)")
    return 0


def _check_catalogue(dsn: str, seed: int, scale: float) -> None:
    import psycopg

    with psycopg.connect(dsn) as conn:
        cfg: dict[str, str] = dict(conn.execute("SELECT key, value FROM soc_settings").fetchall())
    if (cfg.get("catalogue_seed"), cfg.get("catalogue_scale")) != (str(seed), str(scale)):
        print(f"soc run-day: warning: the database's working catalogue (seed {cfg.get('catalogue_seed')},"
              f" scale {cfg.get('catalogue_scale')}) is not the simulated sky (seed {seed}, scale {scale}):"
              " most detections will be new sources", file=sys.stderr)  # fmt: skip


def _wait_with_progress(dsn: str, names: list[str], timeout: float, progress: bool):
    from pipeline.progress import progress_bar
    from pipeline.replay import wait_processed

    with progress_bar(progress) as bar:
        task = bar.add_task("waiting for the environment", total=len(names))

        def show(state) -> None:
            bar.update(task, completed=state.deliveries,
                       description=f"ingested; chunks due: {max(state.due, 0)}")  # fmt: skip

        return wait_processed(dsn, names, timeout, on_poll=show)


def _cmd_wait(args: argparse.Namespace) -> int:
    names = [n for n in Path(args.names_file).read_text().split() if n]
    state = _wait_with_progress(_dsn(args), names, args.timeout, not args.no_progress)
    print(f"{state.deliveries} deliveries ingested, {state.revisions} chunk revisions, none due")
    return 0


def _cmd_alerts(args: argparse.Namespace) -> int:
    """soc alerts run|list|assess|reject|publish|realdata (docs/alerts-operations.md)."""
    return {
        "run": _alerts_run, "list": _alerts_list, "assess": _alerts_change, "reject": _alerts_change,
        "publish": _alerts_publish, "realdata": _alerts_realdata, "recall": _alerts_recall,
    }[args.alerts_command](args)  # fmt: skip


def _alerts_thresholds(args: argparse.Namespace):
    from pipeline.alerts.thresholds import load_thresholds

    return load_thresholds(args.thresholds)


def _alerts_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline.alerts.run import run_alerts
    from pipeline.progress import progress_bar

    write, read = _dsn(args), _dsn(args, read=True)
    with progress_bar(not args.no_progress) as bar:
        task = bar.add_task("scanning pixels", total=None)
        report = run_alerts(
            write, read, workers=args.workers, per_source=args.per_source,
            thresholds=_alerts_thresholds(args),
            on_start=lambda n: bar.update(task, total=n),
            on_pixel=lambda r: bar.update(task, advance=1, description=f"pixel {r.pixel}"),
        )  # fmt: skip
    if report.run_id is None:
        print(report.message)
        return 0
    table = Table(title=f"alerts run {report.run_id} ({report.scan} scan, {report.workers} workers)")
    table.add_column("detector")
    for col in ("raised", "passed filters", "new candidates"):
        table.add_column(col, justify="right")
    for det, n in report.by_detector.items():
        table.add_row(det, f"{n['raised']:,}", f"{n['candidates']:,}", f"{n.get('stored', 0):,}")
    Console().print(table)
    rejected = ", ".join(f"{k} {v:,}" for k, v in report.by_filter.items() if v) or "none"
    print(f"rejected by filter: {rejected}")
    print(f"{report.message} in {report.seconds:.1f} s (scan {report.scan_seconds:.1f} s,"
          f" {report.queries:,} queries, {report.transits:,} transits read)")  # fmt: skip
    return 0


def _alerts_list(args: argparse.Namespace) -> int:
    import csv

    import psycopg
    from rich.console import Console
    from rich.table import Table

    from pipeline.alerts.candidates import list_candidates
    from pipeline.alerts.publish import utc_text

    with psycopg.connect(_dsn(args)) as conn:
        rows = list_candidates(conn, status=args.status, detector=args.detector, run_id=args.run)
    cols = ("id", "name", "status", "detector", "source_id", "trigger_utc", "ra", "dec", "alert_mag",
            "historic_mag", "significance", "class", "run")  # fmt: skip

    def fmt(x, spec: str) -> str:
        return "" if x is None else format(x, spec)

    values = [
        (str(c.candidate_id), c.name or "", c.status, c.detector, str(c.source_id), utc_text(c.t_trigger),
         fmt(c.ra, ".5f"), fmt(c.dec, ".5f"), fmt(c.alert_mag, ".2f"), fmt(c.historic_mag, ".2f"),
         fmt(c.significance, ".1f"), c.alert_class, str(c.run_id))
        for c in rows
    ]  # fmt: skip
    if args.format == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(cols)
        w.writerows(values)
        return 0
    table = Table(title=f"alert candidates ({len(rows)})")
    for col in cols:
        numeric = col in ("id", "ra", "dec", "alert_mag", "historic_mag", "significance", "run")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=True)
    for v in values:
        table.add_row(*v)
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)  # piped: do not squeeze
    return 0


def _alerts_change(args: argparse.Namespace) -> int:
    import psycopg

    from pipeline.alerts.candidates import assess, reject

    with psycopg.connect(_dsn(args), autocommit=True) as conn:
        if args.alerts_command == "assess":
            c = assess(conn, args.id, args.by, args.comment or "", args.alert_class)
        else:
            c = reject(conn, args.id, args.by, args.reason)
    print(f"alert candidate {c.candidate_id}: {c.status} (by {args.by})")
    return 0


def _alerts_publish(args: argparse.Namespace) -> int:
    import os

    import psycopg

    from pipeline.alerts.publish import DEFAULT_AUTHORITY, publish
    from pipeline.config import load

    out = args.out
    if out is None:
        outbox = load(args.config).outbox
        if outbox is None:
            raise ValueError("give --out DIR (no outbox in the configuration file)")
        out = outbox / "alerts"
    authority = args.authority or os.environ.get("SOC_ALERTS_AUTHORITY") or DEFAULT_AUTHORITY
    with psycopg.connect(_dsn(args), autocommit=True) as conn:
        report = publish(conn, out, args.by, authority, _alerts_thresholds(args))
    for cid, name in report.published:
        print(f"published {name} (candidate {cid})")
    print(f"{len(report.published)} alert(s) published now, {report.alerts} in the index; {out}:"
          f" {len(report.written)} file(s) written, {report.unchanged} unchanged;"
          f" VOEvents checked by {report.validated_with or 'nothing (no alerts)'}")  # fmt: skip
    return 0


def _alerts_realdata(args: argparse.Namespace) -> int:
    from pipeline.alerts.realdata import replay_all, write_report

    rows = replay_all(args.data, _alerts_thresholds(args))
    written = write_report(rows, Path(args.out))
    s = written["summary"]
    print(
        f"{s['scored']} light curves scored of {s['n']}: "
        + ", ".join(f"{k} {v}" for k, v in s["counts"].items())
    )
    print(f"raised at the Gaia visit or the next: {s['same_or_next']:.0%};"
          f" not raised before it: {s['not_before']:.0%}")  # fmt: skip
    print(f"report: {written['html']} ({written['csv'].name}, {written['png'].name})")
    return 0


def _alerts_recall(args: argparse.Namespace) -> int:
    """Simulated days with injected events through the pipeline and the alerts, scored against the truth.
    Only an explicit --dsn is used (never the configured databases: the run writes simulated data), else a
    throwaway local server."""
    from pipeline.alerts.recall import RecallConfig, run_recall

    cfg = RecallConfig(start=args.start, days=args.days, scale=args.scale, seed=args.seed,
                       event_rate=args.event_rate, new_source_density=args.new_source_density,
                       healpix_order=args.healpix_order, workers=args.workers, thresholds=args.thresholds,
                       progress=not args.no_progress)  # fmt: skip

    def day(row: dict) -> None:
        print(f"{row['day']}: {row['files']} pass file(s), {row['revisions_reduced']} chunk revision(s)"
              f" reduced, alerts run {row['run_id']}: {row['visits']:,} source-visits,"
              f" {row['candidates']} passed the filters", flush=True)  # fmt: skip

    written = run_recall(cfg, Path(args.out), args.dsn, on_day=day, keep_simulation=args.keep_simulation)
    s = written["summary"]
    f = s["false"]
    print(f"recall of eligible event-visits: {s['recalled']}/{s['eligible']} = {s['recall']:.3f};"
          f" catalogue reference only: {s['recall_not_detectable_yet']['recalled']}/"
          f"{s['recall_not_detectable_yet']['n']}")  # fmt: skip
    rate, upper = f["rate"] * 1e6, f["upper95"] * 1e6
    print(f"false alerts: {f['false_alerts']} in {f['quiet_visits']:,} quiet source-visits ({rate:.2f} per"
          f" 10^6, 95 % upper limit {upper:.2f} per 10^6)")  # fmt: skip
    print(f"report: {written['html']} ({written['csv'].name}, {written['png'].name})")
    return 0


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "operator"


def build_parser() -> argparse.ArgumentParser:
    from pipeline import compare
    from pipeline.simulate.downlink import FAULT_KINDS
    from pipeline.simulate.payload import ANOMALY_KINDS

    p = argparse.ArgumentParser(prog="soc", description="Science Operations Centre pipeline")
    p.add_argument("--version", action="version", version=f"soc-pipeline {__version__}")
    p.add_argument("--config", help="configuration file (default: $SOC_CONFIG, else /etc/soc/soc.yaml)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="simulate days of telemetry of a Gaia-like mission, with truth")
    s.add_argument("--start", default="2016-08-01", help="first UTC day (YYYY-MM-DD)")
    s.add_argument("--days", type=float, default=1.0)
    s.add_argument("--scale", type=float, default=0.001, help="fraction of Gaia's 1.8 billion sources")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--out", required=True, help="output directory (passes/, truth/, summary.json)")
    s.add_argument(
        "--faults",
        type=lambda v: _kinds(v, FAULT_KINDS),
        default=(),
        help=f"comma list of {', '.join(FAULT_KINDS)}, or all / none",
    )
    s.add_argument(
        "--anomalies",
        type=lambda v: _kinds(v, ANOMALY_KINDS),
        default=(),
        help=f"comma list of {', '.join(ANOMALY_KINDS)}, or all / none",
    )
    s.add_argument(
        "--event-rate",
        type=float,
        default=5e-4,
        help="probability that a source has a photometric event in a 100-day bin",
    )
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--no-report", action="store_true", help="skip overview.png and report.html")
    s.set_defaults(func=_cmd_simulate)

    db = sub.add_parser("db", help="create or upgrade the Main Database schema")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    for name, text in (
        ("init", "create the schema and fix the settings"),
        ("migrate", "apply new migrations"),
    ):
        d = dbsub.add_parser(name, help=text)
        d.add_argument("--dsn", help="libpq connection string of the primary (default: $SOC_WRITE_DSN)")
        if name == "init":
            d.add_argument("--chunk-seconds", type=int, default=1800, help="length of a time-ordered chunk")
            d.add_argument("--healpix-order", type=int, default=5, help="HEALPix order of the partitions")
            d.add_argument("--catalogue-seed", type=int, help="working catalogue (sky model) seed")
            d.add_argument("--catalogue-scale", type=float, help="working catalogue (sky model) scale")
    db.set_defaults(func=_cmd_db)

    ing = sub.add_parser("ingest", help="ingest delivered pass files (with their sidecars)")
    ing.add_argument("files", nargs="*", help="pass files (.tm) to ingest")
    ing.add_argument(
        "--watch", metavar="DIR", help="ingest every complete delivery that lands in DIR, forever"
    )
    ing.add_argument("--interval", type=float, default=5.0, help="seconds between looks at DIR")
    ing.add_argument("--dsn", help="libpq connection string of the primary (default: $SOC_WRITE_DSN)")
    ing.add_argument(
        "--reduce", action="store_true", help="with --watch: also reduce every chunk the new data made due"
    )
    ing.add_argument("--outbox", help="with --reduce: directory for the chunk products (default: configured)")
    ing.add_argument("--workers", type=int, help="with --reduce: chunk revisions reduced in parallel")
    ing.add_argument(
        "--retry-after", type=float, default=REDUCE_RETRY_S, metavar="SECONDS",
        help=f"with --reduce: a failed reduction is tried again after this long, or at once when a delivery"
        f" brings data (default {REDUCE_RETRY_S:g})",
    )  # fmt: skip
    ing.set_defaults(func=_cmd_ingest)

    tee = sub.add_parser(
        "tee", help="copy each complete delivery from an incoming directory into every landing, once"
    )
    tee.add_argument("incoming", help="where the ground stations deliver (<stem>.tm, then <stem>.json)")
    tee.add_argument(
        "--to", action="append", required=True, metavar="DIR", help="a landing directory (repeat for each)"
    )
    tee.add_argument("--state", help="where the tee records its copies (default: INCOMING/.soc-tee)")
    tee.add_argument("--interval", type=float, default=5.0, help="seconds between looks at INCOMING")
    tee.add_argument("--once", action="store_true", help="one look, then exit (1 if anything failed)")
    tee.set_defaults(func=_cmd_tee)

    ldb = sub.add_parser("local-db", help="a PostgreSQL 15 server in a directory of its own (one machine)")
    ldb.add_argument("action", choices=("start", "stop", "dsn"))
    ldb.add_argument("--dir", default="var/pg", help="the server's directory")
    ldb.add_argument("--dbname", default="soc")
    ldb.set_defaults(func=_cmd_local_db)

    red = sub.add_parser(
        "reduce", help="reduce every chunk that is due (complete, past its deadline, or late data)"
    )
    red.add_argument("--dsn", help="libpq connection string of the primary (default: $SOC_WRITE_DSN)")
    red.add_argument("--outbox", help="directory for the downstream chunk products (default: none written)")
    red.add_argument(
        "--workers", type=int, help="chunk revisions reduced in parallel (default: the core count)"
    )
    red.add_argument(
        "--flush", action="store_true", help="reduce every chunk now, complete or not (the end of a replay)"
    )
    red.set_defaults(func=_cmd_reduce)

    vp = sub.add_parser(
        "verify-product", help="check chunk products (Parquet + manifest) as a consumer would",
        add_help=False, prefix_chars="\0",  # every argument, --help included, goes to main_verify
    )  # fmt: skip
    vp.add_argument("argv", nargs=argparse.REMAINDER)
    vp.set_defaults(func=_cmd_verify_product)

    rep = sub.add_parser("report", help="reports for people")
    rep.add_argument("what", choices=("health",))
    rep.add_argument("--date", required=True, help="UTC day (YYYY-MM-DD)")
    rep.add_argument("--out", help="HTML file (default health-DATE.html)")
    rep.add_argument("--dsn", help="libpq connection string (default: $SOC_WRITE_DSN)")
    rep.set_defaults(func=_cmd_report)

    day = sub.add_parser("run-day", help="simulate a day of telemetry and run it through the pipeline")
    day.add_argument("--date", default="2016-08-01")
    day.add_argument("--scale", type=float, default=0.001)
    day.add_argument("--seed", type=int, default=1)
    day.add_argument("--workdir", default="var")
    day.add_argument("--dsn", help="libpq connection string of the primary (default: $SOC_WRITE_DSN)")
    day.add_argument("--no-progress", action="store_true")
    day.add_argument(
        "--deliver-to", metavar="DIR",
        help="a deployed environment: deliver into its incoming directory and wait for its services",
    )  # fmt: skip
    day.add_argument("--timeout", type=float, default=1800, help="with --deliver-to: seconds to wait")
    day.set_defaults(func=_cmd_run_day)

    wait = sub.add_parser(
        "wait", help="wait until the configured database has taken the named deliveries and reduced them"
    )
    wait.add_argument("--names-file", required=True, help="delivered file names, one a line (delivered.txt)")
    wait.add_argument("--timeout", type=float, default=1800, help="seconds to wait")
    wait.add_argument("--dsn", help="libpq connection string of the database (default: configured write DSN)")
    wait.add_argument("--no-progress", action="store_true")
    wait.set_defaults(func=_cmd_wait)

    al = sub.add_parser("alerts", help="photometric science alerts: run, candidates, publication")
    alsub = al.add_subparsers(dest="alerts_command", required=True)

    def alerts_cmd(name: str, text: str) -> argparse.ArgumentParser:
        a = alsub.add_parser(name, help=text)
        a.add_argument("--dsn", help="libpq connection string of the primary (default: $SOC_WRITE_DSN)")
        return a

    a = alerts_cmd("run", "scan the chunk revisions not yet scanned and store the candidates")
    a.add_argument("--workers", type=int, help="scan workers (default: the database server's cores)")
    a.add_argument(
        "--per-source", action="store_true", help="one query per source (the benchmark's baseline)"
    )
    a.add_argument("--thresholds", help="YAML file of thresholds merged over the packaged defaults")
    a.add_argument("--no-progress", action="store_true")
    a = alerts_cmd("list", "list alert candidates")
    a.add_argument("--status", choices=("candidate", "assessed", "published", "rejected"))
    a.add_argument("--detector", choices=("new_source", "brightening", "fading"))
    a.add_argument("--run", type=int, help="only the candidates raised by this alerts run")
    a.add_argument("--format", choices=("table", "csv"), default="table")
    a = alerts_cmd("assess", "candidate -> assessed (class and comment go into the published alert)")
    a.add_argument("id", type=int, help="candidate id (soc alerts list)")
    a.add_argument("--by", required=True, help="who assessed it")
    a.add_argument("--comment", help="the published alert's comment (default: what the detector saw)")
    a.add_argument("--class", dest="alert_class", help="the published alert's class (default: unknown)")
    a = alerts_cmd("reject", "candidate or assessed -> rejected")
    a.add_argument("id", type=int, help="candidate id (soc alerts list)")
    a.add_argument("--by", required=True, help="who rejected it")
    a.add_argument("--reason", required=True, help="why")
    a = alerts_cmd("publish", "publish the assessed candidates; write the index, light curves, VOEvents")
    a.add_argument("--out", help="output directory (default: the configured outbox/alerts)")
    a.add_argument("--by", default=_login(), help="who publishes (default: this login)")
    a.add_argument(
        "--authority", help="IVOA authority of the VOEvent ivorns (default: $SOC_ALERTS_AUTHORITY)"
    )
    a.add_argument("--thresholds", help="YAML thresholds (the light curves' null/untrusted flags)")
    a = alsub.add_parser("realdata", help="replay the real Gaia light curves visit by visit; write a report")
    a.add_argument("--out", required=True, help="report directory (alerts_replay.csv/.png/.html)")
    a.add_argument(
        "--data", help="the gaia-alerts data (default: $SOC_GAIA_ALERTS_DIR, else beside the checkout)"
    )
    a.add_argument("--thresholds", help="YAML file of thresholds merged over the packaged defaults")
    a = alsub.add_parser(
        "recall", help="simulated days with injected events through the pipeline: recall and false alerts"
    )
    a.add_argument("--days", type=int, default=3, help="consecutive simulated days, one alerts run each")
    a.add_argument("--start", default="2016-08-01", help="first UTC day (YYYY-MM-DD)")
    a.add_argument("--scale", type=float, default=0.001, help="fraction of Gaia's 1.8 billion sources")
    a.add_argument("--seed", type=int, default=1)
    a.add_argument(
        "--event-rate", type=float, default=0.05,
        help="probability of a photometric event per source per 100 days (simulator default 5e-4)",
    )  # fmt: skip
    a.add_argument(
        "--new-source-density", type=float,
        help="new sources per deg^2 per 100 days at scale 1 (default: 4,000 per 100 days all sky)",
    )  # fmt: skip
    a.add_argument("--healpix-order", type=int, default=2, help="HEALPix order of the database partitions")
    a.add_argument("--workers", type=int, help="reduction and scan workers (default: the core count)")
    a.add_argument("--thresholds", help="YAML file of thresholds merged over the packaged defaults")
    a.add_argument("--out", required=True, help="report directory (recall.csv/.png/.html, ...)")
    a.add_argument(
        "--dsn", help="an empty database to run in (default: a throwaway local server; never the configured"
        " databases)",
    )  # fmt: skip
    a.add_argument("--keep-simulation", action="store_true", help="keep the simulation in OUT/sim")
    a.add_argument("--no-progress", action="store_true")
    al.set_defaults(func=_cmd_alerts)
    compare.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"soc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
