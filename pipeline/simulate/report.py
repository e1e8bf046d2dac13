"""An overview of a simulated run for people: one figure (overview.png) and an HTML page around it."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyarrow.parquet as pq

from pipeline.mission_time import from_utc

FATE_COLOURS = {"telemetered": "tab:blue", "undetected": "tab:gray", "onboard_deleted": "tab:orange"}


def _hours(t, t0):
    return (np.asarray(t, dtype=float) - t0) / 3600.0


def overview_figure(out: Path) -> plt.Figure:
    summary = json.loads((out / "summary.json").read_text())
    t0 = float(from_utc(summary["start_utc"].rstrip("Z")))
    tr = pq.read_table(
        out / "truth" / "transits.parquet",
        columns=["t", "fate", "ra", "dec", "lsf_sigma", "background", "row"],
    ).to_pandas()
    contacts = pq.read_table(out / "truth" / "contacts.parquet").to_pandas()
    anomalies_path = out / "truth" / "anomalies.parquet"
    anomalies = pq.read_table(anomalies_path).to_pandas() if anomalies_path.exists() else None

    fig = plt.figure(figsize=(13, 9), constrained_layout=True)
    gs = fig.add_gridspec(3, 2)
    ax = fig.add_subplot(gs[0, 0])
    bins = np.arange(0, _hours(tr["t"].max(), t0) + 1 / 6, 1 / 6)
    bottom = np.zeros(len(bins) - 1)
    for fate, colour in FATE_COLOURS.items():
        h, _ = np.histogram(_hours(tr.loc[tr["fate"] == fate, "t"], t0), bins)
        ax.bar(bins[:-1], h, width=1 / 6, bottom=bottom, color=colour, label=fate, align="edge")
        bottom += h
    ax.set(title="FoV transits per 10 min", xlabel="hours since start", ylabel="transits")
    ax.legend(fontsize=8)

    ax = fig.add_subplot(gs[0, 1])
    for _, c in contacts.iterrows():
        a, b = _hours(from_utc(c["aos"].rstrip("Z")), t0), _hours(from_utc(c["los"].rstrip("Z")), t0)
        ax.barh(c["station"], b - a, left=a, color="tab:green")
        ax.text(b, c["station"], f" {c['bytes'] / 1e6:.1f} MB", va="center", fontsize=7)
    ax.set(title="ground-station contacts (bytes sent)", xlabel="hours since start")

    ax = fig.add_subplot(gs[1, 0])
    ax.step(
        [_hours(from_utc(x.rstrip("Z")), t0) for x in contacts["los"]],
        contacts["backlog_bytes"] / 1e6,
        where="post",
        color="tab:red",
    )
    ax.set(title="on-board backlog after each contact", xlabel="hours since start", ylabel="MB")

    ax = fig.add_subplot(gs[1, 1])
    tele = tr[tr["fate"] == "telemetered"]
    hrs = _hours(tele["t"], t0)
    sig = np.stack(tele["lsf_sigma"].to_numpy())[:, 4] if len(tele) else np.zeros(0)
    ax.plot(hrs, sig, ",", alpha=0.3, label="LSF sigma AF5 (px)")
    ax2 = ax.twinx()
    ax2.plot(hrs, tele["background"], ",", color="tab:purple", alpha=0.3)
    ax2.set_ylabel("background e-/sample (purple)")
    if anomalies is not None:
        for _, a in anomalies.iterrows():
            end = min(a["t_end"], tr["t"].max())
            ax.axvspan(_hours(a["t_start"], t0), _hours(end, t0), alpha=0.15, color="tab:red")
            ax.text(_hours(a["t_start"], t0), ax.get_ylim()[1], a["kind"], fontsize=7, va="top", rotation=90)
    ax.set(
        title="payload as the windows see it (anomalies shaded)",
        xlabel="hours since start",
        ylabel="LSF sigma (px)",
    )

    ax = fig.add_subplot(gs[2, :], projection="mollweide")
    ra = np.deg2rad(((tr["ra"].to_numpy() + 180.0) % 360.0) - 180.0)
    ax.hexbin(-ra, np.deg2rad(tr["dec"].to_numpy()), gridsize=120, bins="log", mincnt=1, cmap="viridis")
    ax.set_title("where the transits were (ICRS, RA increasing to the left)")
    ax.grid(alpha=0.3)
    ax.set_xticklabels([])
    return fig


def write_report(out: Path) -> Path:
    """Write overview.png and report.html into the run directory; return the HTML path."""
    out = Path(out)
    fig = overview_figure(out)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    (out / "overview.png").write_bytes(buf.getvalue())
    summary = json.loads((out / "summary.json").read_text())
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:,}</td></tr>" for k, v in summary["counts"].items())
    rows += "".join(
        f"<tr><td>fault: {html.escape(k)}</td><td>{v:,}</td></tr>" for k, v in summary["faults"].items()
    )
    style = "body{font-family:sans-serif;margin:2em}td{padding:2px 12px}tr:nth-child(odd){background:#f3f3f3}"
    span = f"{summary['start_utc']} .. {summary['end_utc']}"
    config = html.escape(json.dumps(summary["config"]))
    image = base64.b64encode(buf.getvalue()).decode()
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>soc simulate {html.escape(span)}</title>'
        f"<style>{style}</style></head><body><h1>Simulated telemetry {html.escape(span)}</h1>\n"
        f"<p>{html.escape(summary['software'])}; configuration: <code>{config}</code></p>\n"
        f"<table>{rows}<tr><td>bytes delivered</td><td>{summary['bytes_delivered']:,}</td></tr></table>\n"
        f'<img alt="overview" src="data:image/png;base64,{image}"></body></html>\n'
    )
    path = out / "report.html"
    path.write_text(page)
    return path
