"""`soc compare OPS_DSN VAL_DSN`: the release gate's comparison of operations and validation
(docs/compare.md).

Exit status: 0 identical, 1 different, 2 the comparison could not be made (a database unreachable, a bad
argument, a table without a natural key).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.compare import DEFAULT_MAX_ROWS

DEFAULT_HTML = "compare.html"


def _tables(value: str) -> list[str]:
    names = [t.strip() for t in value.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one table name")
    return names


def _non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {n}")
    return n


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The `compare` sub-command on `soc`'s sub-parsers (it runs `run`)."""
    p = subparsers.add_parser(
        "compare",
        help="compare two Main Databases (operations, validation): checksums, then rows where they differ",
        description="Compare the Main Database contents of operations and validation: a checksum per table"
        " (per leaf partition of sources and transits), then, only where they differ, the rows by natural"
        " key. Writes an HTML report. Exit status 0 identical, 1 different, 2 error.",
    )
    p.add_argument("ops_dsn", metavar="OPS_DSN", help="libpq connection string of operations' database")
    p.add_argument("val_dsn", metavar="VAL_DSN", help="libpq connection string of validation's database")
    p.add_argument(
        "--html", metavar="OUT", default=DEFAULT_HTML, help=f"HTML report (default {DEFAULT_HTML})"
    )
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    p.add_argument("--tables", type=_tables, metavar="T1,T2", help="compare these tables only")
    p.add_argument(
        "--max-rows", type=_non_negative_int, default=DEFAULT_MAX_ROWS, metavar="N",
        help=f"differing rows listed per table (default {DEFAULT_MAX_ROWS}; the counts are always exact)",
    )  # fmt: skip
    p.add_argument(
        "--float-tolerance", type=float, default=0.0, metavar="T",
        help="floats equal when |a - b| <= T * max(1, |a|, |b|) (default 0: exact)",
    )  # fmt: skip
    p.add_argument(
        "--manifests", nargs=2, metavar=("OPS_OUTBOX", "VAL_OUTBOX"),
        help="also compare the chunk products' manifests of the two outboxes",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pipeline.compare.engine import compare
    from pipeline.compare.report import write_html, write_json
    from pipeline.compare.rules import CompareError

    try:
        result = compare(
            args.ops_dsn, args.val_dsn, tables=args.tables, max_rows=args.max_rows,
            float_tolerance=args.float_tolerance,
            manifests=(Path(args.manifests[0]), Path(args.manifests[1])) if args.manifests else None,
            progress=not args.no_progress and sys.stderr.isatty(),
        )  # fmt: skip
    except CompareError as exc:
        print(f"soc compare: error: {exc}", file=sys.stderr)
        return 2
    try:
        written = [write_html(result, Path(args.html))]
        if args.json:
            written.append(write_json(result, Path(args.json)))
    except OSError as exc:
        print(f"soc compare: error: cannot write the report: {exc}", file=sys.stderr)
        return 2
    for area, tables in result.by_area().items():
        for t in tables:
            counts = ((t.only_ops, "missing in val"), (t.only_val, "missing in ops"), (t.changed, "changed"),
                      (len(t.schema), "schema"))  # fmt: skip
            what = [f"{n:,} {k}" for n, k in counts if n]
            cols = ", ".join(f"{c} {n:,}" for c, n in sorted(t.changed_by_column.items()))
            print(f"{area}: {t.table}: {', '.join(what)}" + (f" ({cols})" if cols else ""))
    n_tables = len(result.all_tables)
    if result.identical:
        print(f"identical: {n_tables} tables compared in {result.seconds['total']:.1f} s")
    else:
        bad = sum(1 for t in result.all_tables if t.differences)
        print(f"DIFFERENT: {result.differences:,} difference(s) in {bad} of {n_tables} tables"
              f" ({result.seconds['total']:.1f} s)")  # fmt: skip
    print("report: " + ", ".join(str(p) for p in written))
    return result.exit_status
