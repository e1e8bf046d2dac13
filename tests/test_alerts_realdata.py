"""Real Gaia Science Alerts data: the loaders, the visit-by-visit replay through `evaluate`, its report.

The data lives beside the checkout (<repo>/../shared/data/gaia-alerts, or $SOC_GAIA_ALERTS_DIR). The
floors below are the figures measured on the 97 light curves at the default thresholds (docs/alerts.md),
rounded down a little: a change to the detectors that loses real alerts or raises more before them fails.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline.alerts.gaia_lightcurves import (
    GaiaDataError,
    data_dir,
    lightcurve_history,
    lightcurve_transits,
    read_alerts,
    read_lightcurve,
    visits_of,
)
from pipeline.alerts.realdata import CATEGORIES, REPORT_COLUMNS, replay_all, summarise, write_report
from pipeline.mission_time import from_utc

try:
    DATA = data_dir()
except GaiaDataError as exc:  # pragma: no cover - the data ships beside the checkout
    pytest.skip(f"no Gaia alerts data: {exc}", allow_module_level=True)


def lc_path(name: str):
    return DATA / "lightcurves" / f"{name}.csv"


@pytest.fixture(scope="module")
def rows():
    return replay_all(DATA)


@pytest.fixture(scope="module")
def by_name(rows):
    return {r["name"]: r for r in rows}


# --- agreement floors ---------------------------------------------------------------------------------------
def test_replay_covers_every_light_curve(rows):
    assert len(rows) == 97
    assert {r["category"] for r in rows} <= set(CATEGORIES)
    assert all(r["category"] != "no_match" for r in rows)  # every Gaia Date lies on a light-curve transit


def test_agreement_floors(rows):
    s = summarise(rows)
    # measured at the defaults: 75 of 97 at the Gaia visit (77.3 %), 86 raised at all (88.7 %),
    # 87 not raised before the Gaia visit (89.7 %), 12 raises in 2,154 visits before the Gaia visits
    assert s["same_or_next"] >= 0.75
    assert s["raised"] >= 0.86
    assert s["not_before"] >= 0.87
    assert s["raised_before"] / s["visits_before"] <= 0.007
    assert s["visits_before"] > 2000


# --- named cases --------------------------------------------------------------------------------------------
def test_gaia16aye_microlensing_at_the_gaia_visit(by_name):
    r = by_name["Gaia16aye"]
    assert r["category"] == "same" and r["detector"] == "brightening"
    assert r["first_date"] == "2016-08-05 00:53:51" and r["alert_mag"] == 14.27  # the Gaia Date's transit
    # our history agrees with Gaia's (HistoricMag 15.51, HistoricStdDev 0.06)
    assert abs(r["historic_mag"] - 15.51) < 0.05 and abs(r["historic_std"] - 0.06) < 0.02
    assert not r["raised_before_gaia"]


def test_gaia19bld_small_rise_at_the_gaia_visit(by_name):
    r = by_name["Gaia19bld"]
    assert r["category"] == "same" and r["detector"] == "brightening"
    assert r["gaia_historic_mag"] - r["alert_mag"] < 0.5  # a 0.4-mag rise, caught by significance
    assert r["n_raised_before"] == 0


def test_gaia18cwj_untrusted_rows_are_missing_values(by_name):
    lc = read_lightcurve(lc_path("Gaia18cwj"))
    untrusted = lc.status == "untrusted"
    assert untrusted.sum() > 0 and np.all(np.isnan(lc.mag[untrusted]))
    assert np.all(np.isfinite(lc.mag[lc.status == "ok"]))
    h = lightcurve_history(lc)
    assert np.isnan(h.g_mag).sum() == (lc.status != "ok").sum()  # kept as transits without a magnitude
    r = by_name["Gaia18cwj"]
    assert r["category"] == "same" and r["detector"] == "brightening"


def test_gaia14add_jd_tcb_header(by_name):
    lc = read_lightcurve(lc_path("Gaia14add"))
    assert lc.header == "#Date,JD(TCB),averagemag"
    assert len(lc) == 27 and int(np.isfinite(lc.mag).sum()) == 22
    assert lc.t[0] == from_utc("2014-08-04T11:30:20") and lc.jd[0] == 2456873.97940
    r = by_name["Gaia14add"]
    assert r["detector"] == "brightening" and r["category"] in ("same", "earlier")


def test_near_duplicate_rows_are_one_transit():
    lc = read_lightcurve(lc_path("Gaia18buo"))
    tr = lightcurve_transits(lc)
    assert len(tr.t) == len(lc) - 4  # four pairs a few seconds apart, the second of each `null`
    assert np.all(np.diff(tr.t) >= 60.0)
    dup = lc.t == from_utc("2018-10-12T12:06:10")
    assert lc.mag[dup][0] in tr.mag  # the copy with the magnitude is the one kept


def test_fields_of_view_and_visits_of_gaia16aye():
    tr = lightcurve_transits(read_lightcurve(lc_path("Gaia16aye")))
    day = (tr.t >= from_utc("2016-08-05T00:00:00")) & (tr.t < from_utc("2016-08-06T00:00:00"))
    assert tr.fov[day].tolist() == [0, 1, 0, 1]  # 00:53 P, 02:40 F (+106.5 min), 06:54 P (+6 h), 08:40 F
    assert len(set(tr.visit[day])) == 1
    # 2016-02-27 21:18 -> 2016-02-28 03:19 is one visit across midnight
    night = (tr.t >= from_utc("2016-02-27T21:00:00")) & (tr.t < from_utc("2016-02-28T04:00:00"))
    assert night.sum() == 3 and len(set(tr.visit[night])) == 1


def test_visits_are_anchored_windows():
    day = 86400.0
    t = np.array([0.0, 0.5, 0.99, 1.0, 1.5, 30.0, 30.2]) * day
    assert visits_of(t).tolist() == [0, 0, 0, 1, 1, 2, 2]


# --- loaders ------------------------------------------------------------------------------------------------
def test_alerts_index():
    a = read_alerts(DATA / "alerts.csv")
    assert len(a) == 24770
    r = a.row("Gaia16aye")
    assert r["t"] == from_utc("2016-08-05T00:53:52") and r["alert_mag"] == 14.27 and r["cls"] == "ULENS"
    assert r["historic_mag"] == 15.51 and r["tns"] == "AT2016eta"
    assert "," in a.row("Gaia24amx")["comment"]  # quoted commas stay inside the field
    assert np.isnan(a.row("Gaia24aol")["historic_mag"])  # a new source: empty historic fields
    with pytest.raises(KeyError, match="Gaia99zzz"):
        a.row("Gaia99zzz")


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("2016-13-05 00:53:51,2457605.537,14.27", "bad date '2016-13-05 00:53:51'"),
        ("2016-08-05 00:53:51,2457605.537,14.2x", "bad magnitude '14.2x'"),
        ("2016-08-05 00:53:51,2457605.537", "2 columns, expected 3"),
        ("2016-08-05 00:53:51,2457605.537,14.27,1", "4 columns, expected 3"),
        ("2016-08-05 00:53:51,24576O5.537,14.27", "bad JD '24576O5.537'"),
        ("2016-08-05 00:53:51,2457615.537,14.27", "JD 2457615.537 disagrees with the date"),
    ],
)
def test_broken_light_curve_row_names_file_and_line(tmp_path, line, match):
    src = lc_path("Gaia16aye").read_text().split("\n")
    k = src.index("2016-08-05 00:53:51,2457605.537,14.27")
    src[k] = line
    bad = tmp_path / "Gaia16aye.csv"
    bad.write_text("\n".join(src))
    with pytest.raises(GaiaDataError, match=rf"Gaia16aye\.csv:{k + 1}: {match}"):
        read_lightcurve(bad)


def test_broken_light_curve_header_and_name(tmp_path):
    text = lc_path("Gaia16aye").read_text()
    bad = tmp_path / "Gaia16aye.csv"
    bad.write_text(text.replace("#Date,JD,averagemag.", "#Date,MJD,mag", 1))
    with pytest.raises(GaiaDataError, match=r"Gaia16aye\.csv:2: unknown header"):
        read_lightcurve(bad)
    other = tmp_path / "Gaia16aaa.csv"
    other.write_text(text)
    with pytest.raises(GaiaDataError, match=r"Gaia16aaa\.csv:1: name line 'Gaia16aye'"):
        read_lightcurve(other)


def test_broken_alerts_row_names_file_and_line(tmp_path):
    lines = (DATA / "alerts.csv").read_text().split("\n")[:4]
    lines[2] = lines[2].replace(",", ";", 1)  # one column fewer
    bad = tmp_path / "alerts.csv"
    bad.write_text("\n".join([*lines, ""]))
    with pytest.raises(GaiaDataError, match=r"alerts\.csv:3: 10 columns, expected 11"):
        read_alerts(bad)
    lines = (DATA / "alerts.csv").read_text().split("\n")[:4]
    lines[3] = lines[3].replace("2024-", "2024/", 1)
    bad.write_text("\n".join([*lines, ""]))
    with pytest.raises(GaiaDataError, match=r"alerts\.csv:4: bad date"):
        read_alerts(bad)


def test_data_dir_override_and_report(tmp_path, monkeypatch):
    """$SOC_GAIA_ALERTS_DIR points at another copy: the replay and the report work on what is there."""
    copy = tmp_path / "gaia-alerts"
    (copy / "lightcurves").mkdir(parents=True)
    shutil.copy(DATA / "alerts.csv", copy / "alerts.csv")
    for name in ("Gaia16aye", "Gaia18cwj", "Gaia14add"):
        shutil.copy(lc_path(name), copy / "lightcurves")
    monkeypatch.setenv("SOC_GAIA_ALERTS_DIR", str(copy))
    assert data_dir() == copy.resolve()
    rows = replay_all()
    assert [r["name"] for r in rows] == ["Gaia14add", "Gaia16aye", "Gaia18cwj"]
    out = write_report(rows, tmp_path / "report")
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_lines = out["csv"].read_text().splitlines()
    assert csv_lines[0] == ",".join(REPORT_COLUMNS) and len(csv_lines) == 4
    assert "Gaia16aye" in out["html"].read_text()
    assert out["summary"]["n"] == 3
    monkeypatch.setenv("SOC_GAIA_ALERTS_DIR", str(tmp_path / "absent"))
    with pytest.raises(GaiaDataError, match="does not exist"):
        data_dir()
