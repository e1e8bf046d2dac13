"""Replay of real Gaia light curves visit by visit through `evaluate`, and its report.

For every light curve of the gaia-alerts data (pipeline.alerts.gaia_lightcurves), every visit is one
alerts run: its history is the visits before it, its new transits the visit itself. All (light curve,
visit) pairs of all light curves go through ONE call of the same `evaluate` the operations use, each
pair a pseudo-source of its own (source id = light-curve number * 2^20 + visit), so the replay also
exercises the vectorised code on ~10^5 rows. A real light curve has no catalogue G and no neighbour
information: Sources has g_ref NaN and brighter_neighbour False; flags are 0 and no chunk is bad.

Per real alert the report compares the first visit at which we raise a candidate with the Gaia visit, the
visit holding the transit nearest to the alert's `Date` in alerts.csv (within MATCH_S):

    same      we first raise at the Gaia visit
    next      at the visit after it
    later     at a later visit
    earlier   before the Gaia visit (an early or false alert: Gaia did not alert on that history)
    never     not at all
    no_match  the light curve has no transit within MATCH_S of the Gaia Date (reported, not scored)

`replay_all(dir)` returns the report rows (dicts), `summarise(rows)` the agreement figures and
`write_report(rows, out_dir)` writes alerts_replay.csv, alerts_replay.png and alerts_replay.html.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.alerts.detect import Verdicts, evaluate
from pipeline.alerts.gaia_lightcurves import (
    VISIT_S,
    Transits,
    data_dir,
    lightcurve_paths,
    lightcurve_transits,
    read_alerts,
    read_lightcurve,
)
from pipeline.alerts.history import History, Sources
from pipeline.alerts.thresholds import Thresholds, load_thresholds
from pipeline.htmlpage import page_start
from pipeline.instrument import hodgkin_sigma_g
from pipeline.mission_time import iso

VISIT_BITS = 20
MATCH_S = 86400.0  # the Gaia Date must lie within a day of a light-curve transit
TITLE = "Alerts replay on real Gaia light curves"
CATEGORIES = ("same", "next", "later", "earlier", "never", "no_match")
REPORT_COLUMNS = (
    "name",
    "class",
    "gaia_date",
    "gaia_alert_mag",
    "gaia_historic_mag",
    "n_visits",
    "gaia_visit",
    "gaia_match_s",
    "first_visit",
    "first_date",
    "delay_days",
    "category",
    "raised_before_gaia",
    "detector",
    "alert_mag",
    "historic_mag",
    "historic_std",
    "n_historic",
    "significance",
    "n_raised_visits",
    "n_visits_before",
    "n_raised_before",
    "gaia_visit_verdict",
)


def replay_histories(transits: list[Transits], first_visit: int = 1) -> tuple[History, np.ndarray]:
    """One History holding every (light curve, visit >= first_visit) pair as a pseudo-source: the transits
    of all earlier visits (historic) and of the visit (new). Returns it and the pseudo-source ids of every
    pair (in light-curve then visit order).

    The first visit of a light curve is its first scan (the light curves start with the mission): nothing
    can be compared with it, and a source detected there was already in the sky; in operations the
    catalogue (Sources.g_ref) tells such a persistent source from a new one, which the replay cannot know,
    so by default the replay starts at the second visit (first_visit=1)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("source_id", "t", "g_mag", "fov", "new")}
    pair_ids = []
    for i, tr in enumerate(transits):
        n_visits = int(tr.visit.max()) + 1 if tr.t.size else 0
        for v in range(first_visit, n_visits):
            upto = np.searchsorted(tr.visit, v, side="right")
            sid = (i << VISIT_BITS) + v
            pair_ids.append(sid)
            parts["source_id"].append(np.full(upto, sid, dtype=np.int64))
            parts["t"].append(tr.t[:upto])
            parts["g_mag"].append(tr.mag[:upto])
            parts["fov"].append(tr.fov[:upto])
            parts["new"].append(tr.visit[:upto] == v)
    cols = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    g = cols["g_mag"].astype(float)
    err = np.where(np.isfinite(g), hodgkin_sigma_g(np.nan_to_num(g, nan=20.0)), np.nan)
    history = History.from_rows(
        source_id=cols["source_id"].astype(np.int64),
        t=cols["t"],
        g_mag=g,
        g_mag_err=err,
        fov=cols["fov"].astype(np.int16),
        new=cols["new"].astype(bool),
    )
    return history, np.asarray(pair_ids, dtype=np.int64)


def _fmt(x, digits: int = 3):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return ""
    return round(float(x), digits)


def _row(name: str, alert: dict, tr: Transits, verdicts: Verdicts, index: int, first_visit: int) -> dict:
    """The report row of one light curve (verdicts: those of its pseudo-sources)."""
    n_visits = int(tr.visit.max()) + 1
    lc_rows = (verdicts.source_id >> VISIT_BITS) == index
    v_all = verdicts.take(lc_rows)
    visit_of = v_all.source_id & ((1 << VISIT_BITS) - 1)
    cand = v_all.rejected_by == ""
    k = int(np.argmin(np.abs(tr.t - alert["t"])))
    match_s = float(tr.t[k] - alert["t"])
    gaia_visit = int(tr.visit[k]) if abs(match_s) <= MATCH_S else -1
    row = {
        "name": name,
        "class": alert["cls"],
        "gaia_date": iso(alert["t"])[:19].replace("T", " "),
        "gaia_alert_mag": _fmt(alert["alert_mag"], 2),
        "gaia_historic_mag": _fmt(alert["historic_mag"], 2),
        "n_visits": n_visits,
        "gaia_visit": gaia_visit,
        "gaia_match_s": round(match_s),
        "n_raised_visits": int(np.sum(cand)),
        "n_visits_before": max(gaia_visit - first_visit, 0),
        "n_raised_before": int(np.sum(cand & (visit_of < gaia_visit))) if gaia_visit >= 0 else 0,
    }
    at_gaia = np.flatnonzero(visit_of == gaia_visit)
    row["gaia_visit_verdict"] = (
        f"{v_all.detector[at_gaia[0]]}:{v_all.rejected_by[at_gaia[0]] or 'candidate'}" if at_gaia.size else ""
    )
    if np.any(cand):
        j = np.flatnonzero(cand)[np.argmin(visit_of[cand])]
        first = int(visit_of[j])
        row.update(
            first_visit=first,
            first_date=iso(v_all.t_trigger[j])[:19].replace("T", " "),
            delay_days=_fmt((v_all.t_trigger[j] - alert["t"]) / 86400.0, 2),
            detector=v_all.detector[j],
            alert_mag=_fmt(v_all.alert_mag[j]),
            historic_mag=_fmt(v_all.historic_mag[j]),
            historic_std=_fmt(v_all.historic_std[j]),
            n_historic=int(v_all.n_historic[j]),
            significance=_fmt(v_all.significance[j], 1),
        )
    else:
        first = -1
        row.update(
            first_visit=-1,
            first_date="",
            delay_days="",
            detector="",
            alert_mag="",
            historic_mag="",
            historic_std="",
            n_historic="",
            significance="",
        )
    if gaia_visit < 0:
        cat = "no_match"
    elif first < 0:
        cat = "never"
    elif first == gaia_visit:
        cat = "same"
    elif first == gaia_visit + 1:
        cat = "next"
    elif first > gaia_visit:
        cat = "later"
    else:
        cat = "earlier"
    row["category"] = cat
    row["raised_before_gaia"] = row["n_raised_before"] > 0
    return {c: row[c] for c in REPORT_COLUMNS}


def replay_all(
    directory: str | Path | None = None, thresholds: Thresholds | None = None, first_visit: int = 1
) -> list[dict]:
    """Replay every light curve of the gaia-alerts data directory; one report row per light curve (sorted
    by name). directory None: data_dir() (SOC_GAIA_ALERTS_DIR or <repo>/../shared/data/gaia-alerts)."""
    th = load_thresholds() if thresholds is None else thresholds
    d = data_dir(directory)
    alerts = read_alerts(d / "alerts.csv")
    curves = [read_lightcurve(p) for p in lightcurve_paths(d)]
    transits = [lightcurve_transits(lc, VISIT_S) for lc in curves]
    history, pair_ids = replay_histories(transits, first_visit)
    sources = Sources.from_rows(source_id=pair_ids)
    verdicts = evaluate(history, sources, th)
    return [
        _row(lc.name, alerts.row(lc.name), tr, verdicts, i, first_visit)
        for i, (lc, tr) in enumerate(zip(curves, transits, strict=True))
    ]


def summarise(rows: list[dict]) -> dict:
    """Agreement figures of a replay: counts per category and the fractions of the scored light curves."""
    counts = Counter(r["category"] for r in rows)
    scored = sum(counts[c] for c in CATEGORIES if c != "no_match")
    frac = {c: counts[c] / scored if scored else float("nan") for c in CATEGORIES if c != "no_match"}
    scored_rows = [r for r in rows if r["category"] != "no_match"]
    visits_before = sum(r["n_visits_before"] for r in scored_rows)
    raised_before = sum(r["n_raised_before"] for r in scored_rows)
    return {
        "n": len(rows),
        "visits_before": visits_before,
        "raised_before": raised_before,
        "false_rate": raised_before / visits_before if visits_before else float("nan"),
        "scored": scored,
        "counts": {c: counts[c] for c in CATEGORIES},
        "fractions": frac,
        "same_or_next": (counts["same"] + counts["next"]) / scored if scored else float("nan"),
        "raised": 1.0 - frac["never"] if scored else float("nan"),
        "not_before": (
            scored - sum(bool(r["raised_before_gaia"]) for r in rows if r["category"] != "no_match")
        )
        / scored
        if scored
        else float("nan"),
    }


def _plot(rows: list[dict], summary: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    cats = [c for c in CATEGORIES if summary["counts"][c] or c != "no_match"]
    ax1.bar(cats, [summary["counts"][c] for c in cats], color="tab:blue")
    ax1.set_ylabel("light curves")
    ax1.set_title(f"First raise vs the Gaia alert visit ({summary['scored']} scored)")
    for i, c in enumerate(cats):
        ax1.text(i, summary["counts"][c], str(summary["counts"][c]), ha="center", va="bottom")
    delays = np.array([r["delay_days"] for r in rows if r["delay_days"] != ""], dtype=float)
    if delays.size:
        clipped = np.clip(delays, -400, 400)
        ax2.hist(clipped, bins=np.linspace(-400, 400, 41), color="tab:orange")
    ax2.set_xlabel("first raise - Gaia alert Date (days, clipped at +-400)")
    ax2.set_ylabel("light curves")
    ax2.set_title("Delay of our first alert")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(rows: list[dict], out_dir: str | Path) -> dict:
    """Write alerts_replay.csv, alerts_replay.png and alerts_replay.html into out_dir; returns the paths
    and the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    csv_path = out / "alerts_replay.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(REPORT_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    png = _plot(rows, summary)
    png_path = out / "alerts_replay.png"
    png_path.write_bytes(png)
    html_path = out / "alerts_replay.html"
    html_path.write_text(_html(rows, summary, png))
    return {"csv": csv_path, "png": png_path, "html": html_path, "summary": summary}


def _html(rows: list[dict], summary: dict, png: bytes) -> str:
    esc = html.escape
    parts = [
        page_start(TITLE),
        f"<p>{summary['scored']} scored light curves (of {summary['n']}). Raised at the Gaia visit or the"
        f" next: {summary['same_or_next']:.1%}; raised at all: {summary['raised']:.1%}; not raised before"
        f" the Gaia visit: {summary['not_before']:.1%}; raises before the Gaia visits:"
        f" {summary['raised_before']} in {summary['visits_before']} visits.</p>",
        "<table><tr><th>category</th><th>count</th><th>fraction</th></tr>",
    ]
    for c in CATEGORIES:
        f = summary["fractions"].get(c)
        parts.append(
            f"<tr><td>{c}</td><td>{summary['counts'][c]}</td><td>{'' if f is None else f'{f:.1%}'}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        f"<p><img alt='replay summary' src='data:image/png;base64,{base64.b64encode(png).decode()}'></p>"
    )
    parts.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in REPORT_COLUMNS) + "</tr>")
    for r in rows:
        parts.append("<tr>" + "".join(f"<td>{esc(str(r[c]))}</td>" for c in REPORT_COLUMNS) + "</tr>")
    parts.append("</table></body></html>\n")
    return "\n".join(parts)
