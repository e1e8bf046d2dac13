"""The `soc` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import __version__


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
        done = migrate.init(
            _dsn(args), {"chunk_seconds": args.chunk_seconds, "healpix_order": args.healpix_order}
        )
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
    from pipeline.intake import IntakeError, ingest_file, pending_files

    watch = Path(args.watch) if args.watch else None
    if args.watch == "landing":
        watch = load(args.config).landing
        if watch is None:
            raise ValueError("--watch landing: the configuration file names no landing directory")
    if not args.files and watch is None:
        raise ValueError("nothing to ingest: give pass files or --watch DIR")
    failed = 0
    with psycopg.connect(_dsn(args), autocommit=True) as conn:
        while True:
            files = [Path(f) for f in args.files] if not watch else pending_files(watch)
            for path in files:
                try:
                    r = ingest_file(conn, path)
                except IntakeError as exc:
                    print(f"soc ingest: error: {exc}", file=sys.stderr)
                    failed += 1
                    continue
                if r.outcome == "ingested" or watch is None:
                    print(
                        f"{r.file_name}: {r.outcome}: {r.ingested} ingested, {r.duplicate} duplicate, "
                        f"{r.quarantined} quarantined"
                        + ("" if r.size_ok else " (file shorter than its sidecar says)")
                    )
            if watch is None:
                return 1 if failed else 0
            time.sleep(args.interval)


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


def _reduce(dsn: str, outbox: str | None, workers: int | None = None, flush: bool = False) -> list:
    import functools
    import os

    from pipeline.chunks import reduce_due_parallel
    from pipeline.reduction import make_reducer

    workers = workers or os.cpu_count() or 1  # one worker per core
    return reduce_due_parallel(dsn, functools.partial(make_reducer, outbox=outbox), workers, flush)


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
    migrate.init(dsn, {"catalogue_seed": args.seed, "catalogue_scale": args.scale})
    cfg = SimConfig(start=args.date, days=1.0, scale=args.scale, seed=args.seed, faults=FAULT_KINDS,
                    anomalies=ANOMALY_KINDS, progress=not args.no_progress)  # fmt: skip
    summary = simulate(out, cfg)
    counts = summary["counts"]
    print(f"simulated {counts['transits']:,} transits in {counts['deliveries']} deliveries")
    files = pending_files(out / "passes")
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


def build_parser() -> argparse.ArgumentParser:
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
    db.set_defaults(func=_cmd_db)

    ing = sub.add_parser("ingest", help="ingest delivered pass files (with their sidecars)")
    ing.add_argument("files", nargs="*", help="pass files (.tm) to ingest")
    ing.add_argument(
        "--watch", metavar="DIR", help="ingest every complete delivery that lands in DIR, forever"
    )
    ing.add_argument("--interval", type=float, default=5.0, help="seconds between looks at DIR")
    ing.add_argument("--dsn", help="libpq connection string of the primary (default: $SOC_WRITE_DSN)")
    ing.set_defaults(func=_cmd_ingest)

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
    day.set_defaults(func=_cmd_run_day)
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
