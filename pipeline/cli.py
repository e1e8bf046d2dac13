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


def build_parser() -> argparse.ArgumentParser:
    from pipeline.simulate.downlink import FAULT_KINDS
    from pipeline.simulate.payload import ANOMALY_KINDS

    p = argparse.ArgumentParser(prog="soc", description="Science Operations Centre pipeline")
    p.add_argument("--version", action="version", version=f"soc-pipeline {__version__}")
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
