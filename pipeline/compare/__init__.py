"""`soc compare`: are two Main Databases (operations and its validation clone) identical? (docs/compare.md)

rules.py    what is compared: tables from the catalog, natural keys, documented exclusions
engine.py   checksums per table and per leaf partition, then row differences where they differ
report.py   the HTML report and the JSON result
command.py  the `soc compare` sub-command (add_parser, run)

The names below are imported on first use, so that building `soc`'s parser (add_parser) does not import
psycopg.
"""

from __future__ import annotations

import importlib

DEFAULT_MAX_ROWS = 100  # differing rows listed per table (the counts are always exact)

_EXPORTS = {
    "add_parser": "command",
    "run": "command",
    "compare": "engine",
    "CompareResult": "engine",
    "TableResult": "engine",
    "SegmentResult": "engine",
    "RowDiff": "engine",
    "ValueDiff": "engine",
    "CompareError": "rules",
    "write_html": "report",
    "write_json": "report",
}
__all__ = ["DEFAULT_MAX_ROWS", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"pipeline.compare.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
