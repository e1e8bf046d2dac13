"""Recall and false alerts of the alerts system against the simulator's truth (pipeline.alerts.recall).

Unit tests of the matching and scoring on hand-made truth (which transit is which, what a visit is, which
visits are eligible, recalled or false alerts), then a small end-to-end run: simulated days with injected
events through intake, reduction and the daily alerts runs into a throwaway database, scored against the
truth, with floors measured on that same configuration.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.alerts.detect import evaluate
from pipeline.alerts.history import History, Sources
from pipeline.alerts.recall import (
    CATEGORIES,
    RecallConfig,
    RecallResult,
    Truth,
    deliveries_by_day,
    deployment_visits,
    evaluate_days,
    poisson_upper,
    recall_table,
    score,
    summarise,
    visit_table,
    write_report,
)
from pipeline.alerts.thresholds import load_thresholds
from pipeline.cli import main

TH = load_thresholds()
BIG = 4_000_000_000_000_000_000  # source ids of realistic size: they must never pass through float64


# --- hand-made truth ----------------------------------------------------------------------------------------
def _truth(rows: list[tuple]) -> Truth:
    """rows: (apid, seq, t, source, origin, g_quiet, g_true, event_id)."""
    a = np.array(rows, dtype=object).T
    return Truth.from_arrays(
        apid=a[0].astype(np.int64), seq=a[1].astype(np.int64), t=a[2].astype(float),
        source_id=a[3].astype(np.int64), origin=a[4].astype(np.int64), g_quiet=a[5].astype(float),
        g_true=a[6].astype(float), event_id=a[7].astype(np.int64),
        event_kind={BIG + 11: "outburst", BIG + 12: "fading", BIG + 13: "new_source"},
    )  # fmt: skip


def test_match_by_packet_key_and_nearest_time():
    # the same (apid, seq) twice (the sequence count wrapped), 2 hours apart
    tr = _truth([(300, 5, 1000.0, BIG + 1, 1, 15, 15, 0), (300, 5, 8200.0, BIG + 2, 1, 16, 16, 0),
                 (301, 5, 1000.0, BIG + 3, 1, 17, 17, 0)])  # fmt: skip
    idx = tr.match(
        apid=[300, 300, 301, 301, 300], seq=[5, 5, 5, 6, 5], t=[8200.4, 999.9, 1001.0, 1000.0, 5000]
    )
    assert list(tr.source_id[idx[:3]]) == [BIG + 2, BIG + 1, BIG + 3]
    assert list(idx[3:]) == [-1, -1]  # no such key; the key, but no transit within the tolerance
    assert len(tr.match([], [], [])) == 0


def _new(rows: list[tuple], truth: Truth) -> pd.DataFrame:
    """The new transits of a run: (db_source, fov, good, truth index); measured G = true G + 0.01."""
    a = np.array(rows, dtype=object).T
    ti = a[3].astype(np.int64)
    return pd.DataFrame({"db_source": a[0].astype(np.int64), "fov": a[1].astype(np.int64),
                         "g_mag": np.where(ti >= 0, truth.g_true[ti] + 0.01, np.nan),
                         "good": a[2].astype(bool), "truth": ti})  # fmt: skip


def _verdicts(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows or None, columns=["db_source", "detector", "rejected_by"]).astype(
        {"db_source": np.int64}
    )


# Sources (truth ids BIG + k): 1 quiet, 2 quiet but raised (a false alert), 3 outburst of 1.5 mag with
# history (raised), 4 the same without history (catalogue reference), 5 outburst seen by one field of view,
# 6 an event of 0.5 mag, 7 a fading to G 19.6, 8 a new source split over two pipeline ids (raised through
# the second), 9 an outburst whose verdict is filtered at run 0 and raised at run 1 (the next visit),
# 10 an outburst raised at run 0 and not at run 1 (its candidate is open).
SOURCES = {
    1: (1, 15.0, 15.0, 0), 2: (1, 12.0, 12.0, 0), 3: (1, 17.0, 15.5, BIG + 11), 4: (1, 17.0, 15.5, BIG + 11),
    5: (1, 16.0, 14.0, BIG + 11), 6: (1, 16.0, 15.5, BIG + 11), 7: (1, 17.0, 19.6, BIG + 12),
    8: (2, np.nan, 18.0, BIG + 13), 9: (1, 14.0, 12.0, BIG + 11), 10: (1, 14.0, 12.5, BIG + 11),
}  # fmt: skip
DB = {k: BIG + 100 + k for k in SOURCES}  # the pipeline's ids (catalogue sources keep theirs in reality)


def _scenario():
    rows, new0, new1 = [], [], []
    seq = 0
    for k, (origin, gq, gt, e) in SOURCES.items():
        for run in (0, 1) if k in (9, 10) else (0,):
            for fov in (0,) if k == 5 else (0, 1):
                seq += 1
                rows.append((400, seq, 1e5 * (run + 1) + 6400.0 * fov, BIG + k, origin, gq, gt, e))
                db = DB[k] + (1000 if k == 8 and fov == 1 else 0)
                (new0 if run == 0 else new1).append((db, fov, True, len(rows) - 1))
    truth = _truth(rows)
    pos = truth.match([r[0] for r in rows], [r[1] for r in rows], [r[2] + 0.2 for r in rows])
    assert (pos >= 0).all()  # where each hand-made row went in the truth's order
    new0 = [(d, f, g, pos[i]) for d, f, g, i in new0] + [(DB[1], 0, True, -1)]  # one unmatched transit
    new1 = [(d, f, g, pos[i]) for d, f, g, i in new1]
    hist0 = pd.Series({DB[k]: 5 for k in (1, 2, 3, 5, 6, 7, 9, 10)})
    hist1 = pd.Series({DB[9]: 7, DB[10]: 7})
    v0 = _verdicts([(DB[2], "brightening", ""), (DB[3], "brightening", ""), (DB[4], "brightening", ""),
                    (DB[5], "brightening", "single_fov"), (DB[8] + 1000, "new_source", ""),
                    (DB[9], "brightening", "bright_neighbour"), (DB[10], "brightening", "")])  # fmt: skip
    v1 = _verdicts([(DB[9], "brightening", "")])
    a, un0 = visit_table(0, _new(new0, truth), truth, hist0, v0)
    b, un1 = visit_table(1, _new(new1, truth), truth, hist1, v1)
    return score(pd.concat([a, b], ignore_index=True), TH), un0 + un1


def test_visits_categories_and_recall_on_hand_made_truth():
    v, unmatched = _scenario()
    assert unmatched == 1
    assert v["source"].dtype == np.int64 and v["event_id"].dtype == np.int64
    by = {(int(r.source) - BIG, int(r.run)): r for r in v.itertuples()}
    cat = {k: r.category for k, r in by.items()}
    assert cat == {
        (1, 0): "quiet", (2, 0): "quiet", (3, 0): "eligible", (4, 0): "not_detectable_yet",
        (5, 0): "one_fov", (6, 0): "below_dm", (7, 0): "too_faint", (8, 0): "eligible",
        (9, 0): "eligible", (9, 1): "eligible", (10, 0): "eligible", (10, 1): "eligible",
    }  # fmt: skip
    assert by[(3, 0)].dm == pytest.approx(-1.5) and by[(7, 0)].dm == pytest.approx(2.6)
    assert by[(8, 0)].kind == "new_source" and by[(8, 0)].raised  # through its second pipeline id
    assert by[(3, 0)].kind == "outburst" and by[(3, 0)].db_source == DB[3]
    assert by[(5, 0)].n_fov == 1 and by[(5, 0)].rejected_by == "single_fov"
    how = {k: r.how for k, r in by.items() if r.category == "eligible"}
    assert how == {(3, 0): "raised", (8, 0): "raised", (9, 0): "next_visit", (9, 1): "raised",
                   (10, 0): "raised", (10, 1): "open_candidate"}  # fmt: skip
    assert by[(10, 1)].history_dm == pytest.approx(1.5) and by[(3, 0)].history_dm == 0
    assert by[(2, 0)].raised and not by[(1, 0)].raised
    assert by[(3, 0)].g_measured == pytest.approx(15.51)


def test_summary_counts_false_alerts_and_recall():
    v, _ = _scenario()
    s = summarise(v, TH)
    assert s["eligible"] == 6 and s["recalled"] == 6 and s["recall"] == 1.0
    assert s["recall_same_visit"] == pytest.approx(4 / 6)
    assert s["recall_by_how"] == {"raised": 4, "next_visit": 1, "open_candidate": 1}
    assert s["not_detectable_yet"] == 1 and s["recall_not_detectable_yet"]["recalled"] == 1
    assert s["false"]["false_alerts"] == 1 and s["false"]["quiet_visits"] == 2
    assert s["false"]["rate"] == 0.5
    assert s["false"]["upper95"] == pytest.approx(poisson_upper(1) / 2)
    assert s["false_by_detector"] == {"brightening": 1}
    assert [o["median"] for o in s["g_offset_quiet"]] == [pytest.approx(0.01)] * 2  # G 12 and 15
    assert sum(s["categories"].values()) == len(v) and set(s["categories"]) == set(CATEGORIES)
    t = recall_table(v)
    row = t[(t["category"] == "eligible") & (t["group"] == "all")].iloc[0]
    assert (row["n"], row["recalled"]) == (6, 6)
    g = t[(t["category"] == "eligible") & (t["group"] == "G")]
    assert g["n"].sum() == 6  # every eligible visit is in one G bin
    dm = t[(t["category"] == "eligible") & (t["group"] == "dm")]
    assert dm["n"].sum() == 5  # the new source has no delta-m


def test_missed_visit_names_its_filter():
    v, _ = _scenario()
    at = ((v["source"] == BIG + 9) & (v["run"] == 1)).to_numpy()
    v.loc[at, "raised"] = False  # filtered at both of its visits
    v.loc[at, "rejected_by"] = "bright_neighbour"
    s = summarise(score(v.drop(columns=["category", "recalled", "how", "history_dm", "after_event"]), TH), TH)
    assert s["recalled"] == 4
    assert s["missed_by"] == {"filtered: bright_neighbour": 2}


# --- what the evaluation found: a history that is the event itself ------------------------------------------
DAY_S = 86400.0


def _under_way(g_ref: float, hist_g: float, new_g: float, hist_days=(0.0, 0.07, 1.0)):
    """A source with three historic transits at hist_g (over hist_days) and a new visit at new_g."""
    t = np.r_[np.asarray(hist_days) * DAY_S, 9 * DAY_S, 9 * DAY_S + 6390.0]
    g = np.r_[np.full(3, hist_g), new_g, new_g] + np.array([0.004, -0.003, 0.002, 0.003, -0.002])
    h = History.from_rows(source_id=np.full(5, 7, np.int64), t=t, g_mag=g, fov=np.array([1, 1, 1, 0, 1]),
                          new=np.array([False, False, False, True, True]))  # fmt: skip
    return evaluate(h, Sources.from_rows(source_id=[7], g_ref=[g_ref]), TH)


def test_history_under_way_compares_with_the_catalogue():
    # an outburst first seen by one field of view only, then by both: its history is the outburst
    v = _under_way(17.78, 16.39, 16.62)
    assert list(v.detector) == ["brightening"] and v.rejected_by[0] == ""
    assert v.historic_mag[0] == pytest.approx(17.78) and np.isnan(v.historic_std[0])
    assert len(_under_way(np.nan, 16.39, 16.62)) == 0  # no catalogue: the history is the reference
    assert len(_under_way(16.45, 16.39, 16.62)) == 0  # a history that agrees with the catalogue
    # a history departing from the catalogue for longer than catalogue_history_days: the catalogue is off
    days = (0.0, 0.5 * TH.catalogue_history_days, 1.01 * TH.catalogue_history_days)
    assert len(_under_way(17.78, 16.39, 16.40, days)) == 0
    assert len(_under_way(17.78, 16.39, 16.40)) == 1


def test_poisson_upper_limits():
    assert poisson_upper(0) == pytest.approx(2.9957, abs=1e-4)
    assert poisson_upper(1) == pytest.approx(4.7439, abs=1e-4)


def test_deliveries_by_day(tmp_path):
    for name, received in (("A", "2016-08-01T23:59:59Z"), ("B", "2016-08-02T00:10:00Z"),
                           ("C", "2016-08-04T01:00:00Z"), ("D", "2016-07-31T12:00:00Z")):  # fmt: skip
        (tmp_path / f"{name}.tm").write_bytes(b"")
        (tmp_path / f"{name}.json").write_text(json.dumps({"reception_utc": received}))
    days = deliveries_by_day(tmp_path, "2016-08-01", 3)
    assert [[p.name for p in d] for d in days] == [["A.tm"], ["B.tm"], []]


def test_report_files(tmp_path):
    v, _ = _scenario()
    result = RecallResult(RecallConfig(days=1), TH, v, runs=[{"day": "2016-08-01", "run_id": 1}])
    out = write_report(result, tmp_path)
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out["csv"])
    assert {"category", "group", "bin", "n", "recalled", "recall"} <= set(table.columns)
    visits = pd.read_csv(out["visits"])
    assert len(visits) == len(v) - 1  # every visit but the quiet one not raised
    assert visits["source"].astype(np.int64).isin(v["source"]).all()  # ids survive the CSV exactly
    assert "false alerts" in out["html"].read_text().lower()
    assert json.loads(out["json"].read_text())["summary"]["eligible"] == 6


def test_config_refuses_nonsense():
    with pytest.raises(ValueError, match="days"):
        RecallConfig(days=0)
    with pytest.raises(ValueError):
        RecallConfig(start="2016-13-01")


# --- end to end ---------------------------------------------------------------------------------------------
E2E = ["--days", "3", "--scale", "0.0004", "--seed", "3", "--event-rate", "0.1", "--workers", "2"]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, pg_server, pg_template):
    """`soc alerts recall` on three simulated days (scale 0.0004, event rate 200 x the default) into a fresh
    database of the test server (about 30 s)."""
    import psycopg

    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS soc_recall_e2e")
        conn.execute(f"CREATE DATABASE soc_recall_e2e TEMPLATE {pg_template}")
    out = tmp_path_factory.mktemp("recall")
    dsn = pg_server.dsn("soc_recall_e2e")
    argv = ["alerts", "recall", *E2E, "--out", str(out), "--dsn", dsn, "--no-progress", "--keep-simulation"]
    assert main(argv) == 0
    return {"out": out, "dsn": dsn, "report": json.loads((out / "recall_summary.json").read_text())}


def test_end_to_end_recall_and_false_alerts(e2e):
    r = e2e["report"]
    s = r["summary"]
    assert [x["run_id"] for x in r["runs"]] == [1, 2, 3]  # one alerts run per day
    assert r["unmatched_transits"] == 0  # every transit in the database is one of the simulator's
    # measured on this configuration: 54 of 54 eligible event-visits recalled (new sources mostly: three
    # days give little history), 321 of 325 with the catalogue G as the only reference (the 4 missed:
    # saturated transits of bright stars, rejected by quality_flags by design), no false alert in 28,427
    # quiet source-visits, and the pipeline's G within 0.005 mag of the catalogue's at every magnitude
    assert s["eligible"] >= 40 and s["recall"] >= 0.95
    assert s["recall_not_detectable_yet"]["n"] >= 250 and s["recall_not_detectable_yet"]["recall"] >= 0.95
    assert s["false"]["quiet_visits"] >= 25_000 and s["false"]["false_alerts"] == 0
    assert all(abs(o["median"]) < 0.02 for o in s["g_offset_quiet"])  # the pipeline's G is the catalogue's
    assert {"csv", "png", "html"} <= {p.suffix[1:] for p in e2e["out"].iterdir()}


def test_a_deployments_run_is_scored_as_the_evaluation_scores_it(e2e):
    """deployment_visits (the acceptance features: a run that kept only its candidates) gives the last
    run's visits the categories the evaluation gave them, and recalls those it recalled."""
    import psycopg

    with psycopg.connect(e2e["dsn"]) as conn:
        last = "SELECT chunk_id, revision FROM alert_run_chunks WHERE run_id = 3"
        revisions = conn.execute(last).fetchall()
        got = deployment_visits(conn, revisions, Truth.read(e2e["out"] / "sim"), TH)
    every = pd.read_parquet(e2e["out"] / "recall_visits.parquet")
    want = every[every["run"] == 2].set_index("source").sort_index()
    got = got.set_index("source").sort_index()
    assert len(got) > 1000 and got.index.equals(want.index)
    assert (got["category"] == want["category"]).all()
    countable = want["category"].isin(["eligible", "not_detectable_yet"])
    assert countable.sum() >= 50
    # the last run has no next visit: recalled is raised now or earlier in the same event, a candidate
    assert (got.loc[countable, "recalled"] == want.loc[countable, "recalled"]).all()


def test_end_to_end_refuses_a_used_database(e2e, tmp_path):
    with pytest.raises(ValueError, match="not empty"):
        evaluate_days(RecallConfig(days=1, scale=0.0003, seed=2), e2e["dsn"], tmp_path)
