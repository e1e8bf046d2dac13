"""The comparison's reports: one self-contained HTML file (no scripts, no external resources) and JSON."""

from __future__ import annotations

from html import escape
from pathlib import Path

from pipeline.compare.engine import MANIFESTS, CompareResult, RowDiff, TableResult
from pipeline.compare.rules import AREAS

MAX_VALUE_CHARS = 300  # longer values (packets, JSON summaries) are cut in the HTML; the JSON has them whole

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; text-align: left; }
th { background: #f0f0f0; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; font-weight: bold; } .bad { color: #cf222e; font-weight: bold; }
.muted { color: #777; } code, td.v { font-family: ui-monospace, monospace; word-break: break-all; }
tr.only_ops td.kind { background: #fff1e5; } tr.only_val td.kind { background: #e7f0ff; }
tr.changed td.kind { background: #fff8c5; }
"""

_KIND = {"only_ops": "missing in val", "only_val": "missing in ops", "changed": "value differs"}


def _v(x: str | None, missing: bool = False) -> str:
    if missing:
        return '<span class="muted">(no row)</span>'
    if x is None:
        return '<span class="muted">NULL</span>'
    s = x if len(x) <= MAX_VALUE_CHARS else x[:MAX_VALUE_CHARS] + f"… ({len(x):,} characters)"
    return escape(s)


def _n(x: int | None) -> str:
    return "—" if x is None else f"{x:,}"


def _status(t: TableResult) -> str:
    if t.differences:
        return f'<span class="bad">{t.differences:,} difference(s)</span>'
    if t.checksum_equal is False:  # within the float tolerance
        return f'<span class="ok">equal within tolerance</span> ({t.within_tolerance:,} rows)'
    return '<span class="ok">identical</span>'


def _summary(result: CompareResult) -> str:
    head = ("table", "key", "rows ops", "rows val", "checksum equal", "segments differing", "missing in val",
            "missing in ops", "rows changed", "status")  # fmt: skip
    eq = {True: '<span class="ok">yes</span>', False: '<span class="bad">no</span>', None: "—"}
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for t in result.all_tables:
        db = t.table != MANIFESTS
        name = escape(t.table)
        cells = [
            (f'<a href="#{name}">{name}</a>' if t.differences else name, False),
            (f"<code>{escape(', '.join(t.key))}</code>", False),
            (_n(t.ops_rows), True),
            (_n(t.val_rows), True),
            (eq[t.checksum_equal] if db else "—", False),
            (f"{len(t.segments):,} / {t.n_segments:,}" if db else "—", True),
            (f"{t.only_ops:,}", True),
            (f"{t.only_val:,}", True),
            (f"{t.changed:,}", True),
            (_status(t), False),
        ]
        tds = "".join(f'<td class="n">{c}</td>' if num else f"<td>{c}</td>" for c, num in cells)
        out.append(f"<tr>{tds}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _areas(result: CompareResult) -> str:
    """The differences classified by area (rules.AREAS): what differs, and what that means."""
    out = ["<table><tr><th>area</th><th>what it means</th><th>tables</th><th>differences</th>"
           "<th>columns changed</th></tr>"]  # fmt: skip
    for area, tables in result.by_area().items():
        meaning = AREAS[area][1] if area in AREAS else "a table without an area: classify it in rules.AREAS"
        links = ", ".join(f'<a href="#{escape(t.table)}">{escape(t.table)}</a>' for t in tables)
        cols = ", ".join(f"{escape(t.table)}.{escape(c)} ({n:,})" for t in tables
                         for c, n in sorted(t.changed_by_column.items()))  # fmt: skip
        n = sum(t.differences for t in tables)
        out.append(f'<tr><td class="bad">{escape(area)}</td><td>{escape(meaning)}</td><td>{links}</td>'
                   f'<td class="n">{n:,}</td><td>{cols or "—"}</td></tr>')  # fmt: skip
    out.append("</table>")
    return "\n".join(out)


def _row_lines(r: RowDiff) -> list[str]:
    key = "<br>".join(f"{escape(k)} = {_v(v)}" for k, v in r.key.items())
    kind = (f'<td class="kind">{_KIND[r.kind]}</td><td><code>{escape(r.segment)}</code></td>'
            f'<td class="v">{key}</td>')  # fmt: skip
    if r.kind == "changed":
        lines = []
        for i, d in enumerate(r.values):
            first = kind.replace("<td", f'<td rowspan="{len(r.values)}"', 3) if i == 0 else ""
            lines.append(f'<tr class="changed">{first}<td><code>{escape(d.column)}</code></td>'
                         f'<td class="v">{_v(d.ops)}</td><td class="v">{_v(d.val)}</td></tr>')  # fmt: skip
        return lines
    row = "<br>".join(
        f"{escape(d.column)} = {_v(d.ops if r.kind == 'only_ops' else d.val)}" for d in r.values
    )
    ops = row if r.kind == "only_ops" else _v(None, missing=True)
    val = row if r.kind == "only_val" else _v(None, missing=True)
    return [f'<tr class="{r.kind}">{kind}<td class="muted">(row)</td><td class="v">{ops}</td>'
            f'<td class="v">{val}</td></tr>']  # fmt: skip


def _table_section(t: TableResult, max_rows: int) -> str:
    out = [f'<h2 id="{escape(t.table)}">{escape(t.table)}: {t.differences:,} difference(s)</h2>']
    if t.schema:
        out.append(
            "<p>Schema differences:</p><ul>" + "".join(f"<li>{escape(s)}</li>" for s in t.schema) + "</ul>"
        )
    counts = (f"{t.only_ops:,} row(s) missing in validation, {t.only_val:,} missing in operations,"
              f" {t.changed:,} changed")  # fmt: skip
    if t.changed_by_column:
        counts += (
            " (" + ", ".join(f"{escape(c)}: {n:,}" for c, n in sorted(t.changed_by_column.items())) + ")"
        )
    out.append(f"<p>{counts}.</p>")
    if t.segments and t.partitioned:
        out.append(f"<p>Leaf partitions whose checksums differ ({len(t.segments):,} of {t.n_segments:,};"
                   " only these were compared row by row):</p>")  # fmt: skip
        out.append("<table><tr><th>partition</th><th>rows ops</th><th>rows val</th><th>checksum ops</th>"
                   "<th>checksum val</th><th>hash buckets differing</th></tr>")  # fmt: skip
        for s in t.segments:
            b = f"{s.buckets_differing:,} / {s.buckets:,}" if s.buckets else "—"
            out.append(f"<tr><td><code>{escape(s.name)}</code></td><td class='n'>{_n(s.ops_rows)}</td>"
                       f"<td class='n'>{_n(s.val_rows)}</td><td><code>{s.ops_digest or '—'}</code></td>"
                       f"<td><code>{s.val_digest or '—'}</code></td><td class='n'>{b}</td></tr>")  # fmt: skip
        out.append("</table>")
    if t.rows:
        out.append("<table><tr><th>difference</th><th>segment</th><th>key</th><th>column</th>"
                   "<th>operations</th><th>validation</th></tr>")  # fmt: skip
        for r in t.rows:
            out.extend(_row_lines(r))
        out.append("</table>")
        rows_differing = t.only_ops + t.only_val + t.changed
        if rows_differing > len(t.rows):
            out.append(f"<p class='muted'>{len(t.rows):,} of {rows_differing:,} differing rows listed"
                       f" (--max-rows {max_rows}); the counts above are exact.</p>")  # fmt: skip
    for note in t.notes:
        out.append(f"<p class='muted'>{escape(note)}</p>")
    return "\n".join(out)


def html_report(result: CompareResult) -> str:
    verdict = (
        '<span class="ok">IDENTICAL</span>'
        if result.identical
        else f'<span class="bad">{result.differences:,} DIFFERENCE(S)</span>'
    )
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    tol = f"{result.float_tolerance:g} (relative, absolute below 1)" if result.float_tolerance else "exact"
    info = [
        ("operations", f"<code>{escape(result.ops)}</code>"),
        ("validation", f"<code>{escape(result.val)}</code>"),
        ("started (UTC)", escape(result.started_utc)),
        ("time", escape(secs)),
        ("snapshot", "each database read in one snapshot" if result.consistent_snapshot
         else "<span class='bad'>no exported snapshot: each read saw the database as it was then</span>"),
        ("floats", tol),
        ("rows listed per table", f"at most {result.max_rows:,}"),
    ]  # fmt: skip
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>soc compare</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Main Database comparison: {verdict}</h1>",
        "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in info) + "</table>",
    ]
    if not result.identical:
        parts += ["<h2>Differences by area</h2>", _areas(result)]
    parts += ["<h2>Tables</h2>", _summary(result)]
    if result.excluded_tables:
        parts.append("<p>Not compared:</p><ul>")
        parts += [
            f"<li><code>{escape(t)}</code>: {escape(w)}</li>" for t, w in result.excluded_tables.items()
        ]
        parts.append("</ul>")
    excluded_cols = [(t.table, c, w) for t in result.all_tables for c, w in t.excluded.items()]
    if excluded_cols:
        parts.append("<details><summary>Columns not compared</summary><ul>")
        parts += [f"<li><code>{escape(t)}.{escape(c)}</code>: {escape(w)}</li>" for t, c, w in excluded_cols]
        parts.append("</ul></details>")
    for t in result.all_tables:
        if t.differences:
            parts.append(_table_section(t, result.max_rows))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html(result: CompareResult, path: Path) -> Path:
    path = Path(path)
    path.write_text(html_report(result), encoding="utf-8")
    return path


def write_json(result: CompareResult, path: Path) -> Path:
    path = Path(path)
    path.write_text(result.to_json(), encoding="utf-8")
    return path
