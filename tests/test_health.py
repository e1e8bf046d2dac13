"""Payload health monitoring (pipeline.health) on data of the simulator's payload model.

One simulated day with every payload anomaly goes through the real chain (pass files, decode_pass, chunks,
image parameters, monitor); a clean day observes the same transits through a payload without anomalies
(pipeline.simulate.payload.Payload + pipeline.simulate.windows.observe, the model the simulator uses).
"""

from __future__ import annotations

import base64
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import health
from pipeline import instrument as ins
from pipeline.health import HealthLimits, Severity, monitor_chunk
from pipeline.mission_time import from_utc, mission_of_obt, obt_of
from pipeline.simulate.payload import HK_CADENCE_S, Anomaly, Payload
from pipeline.simulate.run import SimConfig, simulate
from pipeline.simulate.windows import observe
from pipeline.telemetry.decode import decode_pass
from pipeline.telemetry.passfile import list_passes, read_pass

CHUNK_S = health.DEFAULT_CHUNK_SECONDS
SEED = 11
START = "2016-08-01"
ANOMALIES = ("temperature_excursion", "focus_drift", "bias_jump")


def chunk_of(t_mission: float) -> int:
    return int(np.floor(obt_of(t_mission) / CHUNK_S))


def chunk_mission_span(cid: int) -> tuple[float, float]:
    return float(mission_of_obt(cid * CHUNK_S)), float(mission_of_obt((cid + 1) * CHUNK_S))


def payload_hk(payload: Payload, t_lo: float, t_hi: float) -> dict:
    """HK packets' content on the simulator's 30-s grid (float32 as telemetered)."""
    t = np.arange(np.ceil(t_lo / HK_CADENCE_S), np.ceil(t_hi / HK_CADENCE_S)) * HK_CADENCE_S
    obt, seq = obt_of(t), np.arange(len(t))
    return {
        "hk_thermal": {"obt": obt, "seq": seq, "temps": payload.hk_thermal(t).astype(np.float32)},
        "hk_bias": {"obt": obt, "seq": seq, "bias": payload.hk_bias(t).astype(np.float32)},
        "hk_power": {"obt": obt, "seq": seq, "values": payload.hk_power(t).astype(np.float32)},
    }


def payload_packets(payload: Payload, transits: pd.DataFrame, t_lo: float, t_hi: float, seed: int) -> dict:
    """HK and star packets' content of the transits in [t_lo, t_hi) observed through payload."""
    x = transits[(transits["t"] >= t_lo) & (transits["t"] < t_hi)]
    row = x["row"].to_numpy().astype(np.int64)
    flux = np.nan_to_num(ins.flux_e_s(x["g_true"].to_numpy()), nan=0.0)
    obs = observe(np.random.default_rng(seed), payload, x["t"].to_numpy(), row, flux)
    d = obs["detected"]
    o = np.argsort(obs["obt_af1"][d], kind="stable")
    star = {
        "obt": obs["obt_af1"][d][o],
        "fov": x["fov"].to_numpy()[d][o],
        "row": row[d][o],
        "mag_class": obs["mag_class"][d][o],
        "gate": obs["gate"][d][o],
        "flags": obs["saturated"][d][o].astype(np.uint8),
        "n_samples": obs["n_samples"][d][o],
        "samples": obs["samples"][d][o],
    }
    return {"star": star, **payload_hk(payload, t_lo, t_hi)}


def events_of(events, kind=None, chunk=None, min_severity=Severity.INFO):
    return [
        e
        for e in events
        if (kind is None or e.kind in ((kind,) if isinstance(kind, str) else kind))
        and (chunk is None or e.chunk_id == chunk)
        and e.severity >= min_severity
    ]


@pytest.fixture(scope="module")
def limits() -> HealthLimits:
    return HealthLimits.load()


@pytest.fixture(scope="module")
def anomaly_day(tmp_path_factory, limits):
    """A simulated day with one anomaly of each kind; the downlink drains everything (margin 3)."""
    out = tmp_path_factory.mktemp("health-day")
    cfg = SimConfig(
        start=START,
        days=1.0,
        scale=0.0003,
        seed=SEED,
        progress=False,
        anomalies=ANOMALIES,
        downlink_margin=3.0,
    )
    simulate(out, cfg)
    packets = health.merge_decoded(decode_pass(read_pass(p)[1]) for p in list_passes(out / "passes"))
    events, series = health.monitor_packets(packets, limits)
    transits = pd.read_parquet(
        out / "truth" / "transits.parquet", columns=["t", "fov", "row", "g_true", "fate"]
    )
    return SimpleNamespace(
        events=events,
        series=series,
        truth=pd.read_parquet(out / "truth" / "anomalies.parquet"),
        transits=transits[transits["fate"] == "telemetered"],
        packets=packets,
    )


@pytest.fixture(scope="module")
def clean_day(anomaly_day, limits):
    """The same day's transits observed through a payload without anomalies."""
    t_lo = float(from_utc(START))
    packets = payload_packets(Payload(SEED, []), anomaly_day.transits, t_lo, t_lo + 86400.0, SEED)
    events, series = health.monitor_packets(packets, limits)
    return SimpleNamespace(events=events, series=series, packets=packets)


# --- limits and pure functions ------------------------------------------------------------------------------
def test_limits_load_merge_and_refuse(tmp_path):
    lim = HealthLimits.load()
    assert lim["fpa_temperature"]["nominal_k"] == 163.0
    assert lim["bias"]["step_adu"]["error"] == 10.0
    assert np.all(lim.bias_reference() == 1500.0)
    assert Severity.INFO < Severity.WARNING < Severity.ERROR < Severity.CRITICAL

    override = tmp_path / "mine.yaml"
    ref = (1500.0 + np.arange(70).reshape(7, 10)).tolist()
    override.write_text(yaml.safe_dump({"bias": {"step_adu": {"error": 5.0}, "reference_adu": ref}}))
    mine = HealthLimits.load(override)
    assert mine["bias"]["step_adu"] == {"warning": 2.0, "error": 5.0, "critical": 200.0}
    assert mine["bias"]["level_deviation_adu"] == lim["bias"]["level_deviation_adu"]  # untouched keys stay
    assert mine.bias_reference()[3, 4] == 1534.0
    assert mine.sources[-1] == str(override)

    for bad in (
        {"bias": {"step_adu_typo": 3}},  # unknown key
        {"fpa_temperature": {"deviation_k": {"warning": 1.0, "error": 0.5}}},  # thresholds must grow
        {"detections": {"fraction_of_expected": {"warning": 0.1, "error": 0.3}}},  # ... or fall
        {"bias": {"reference_adu": [[1500.0] * 10] * 6}},  # wrong shape
    ):
        override.write_text(yaml.safe_dump(bad))
        with pytest.raises(ValueError):
            HealthLimits.load(override)


def test_grade_and_sliding_slope():
    table = {"warning": 1.0, "error": 2.0, "critical": 5.0}
    assert health.grade(0.5, table) == (None, pytest.approx(np.nan, nan_ok=True))
    assert health.grade(1.5, table) == (Severity.WARNING, 1.0)
    assert health.grade(7.0, table) == (Severity.CRITICAL, 5.0)
    assert health.grade(0.1, {"warning": 0.5, "error": 0.2}, lower_is_worse=True) == (Severity.ERROR, 0.2)
    t = np.arange(10) * 30.0
    y = np.stack([0.01 * t, -0.002 * t + 5.0], axis=1)
    slope, ta, tb = health.sliding_slope(t, y, 5)
    assert slope.shape == (6, 2)
    np.testing.assert_allclose(slope, np.broadcast_to([0.01, -0.002], (6, 2)), rtol=1e-9)
    np.testing.assert_array_equal(tb - ta, 120.0)
    assert health.sliding_slope(t[:3], y[:3], 5)[0].shape == (1, 2)  # fewer samples than the fit length
    assert health.sliding_slope(t[:1], y[:1], 5)[0].shape == (0, 2)


# --- the simulated day with anomalies -----------------------------------------------------------------------
def test_every_anomaly_is_found_in_its_chunk(anomaly_day, limits):
    assert sorted(anomaly_day.truth["kind"]) == sorted(ANOMALIES)
    for a in anomaly_day.truth.itertuples():
        start_obt = float(obt_of(a.t_start))
        c = chunk_of(a.t_start)
        if a.kind == "temperature_excursion":
            level = events_of(anomaly_day.events, "fpa_temperature", c, Severity.WARNING)
            rate = events_of(anomaly_day.events, "fpa_temperature_rate", c, Severity.ERROR)
            assert [e.row for e in level] == [a.row] and [e.row for e in rate] == [a.row]
            assert max(e.severity for e in level + rate) >= Severity.ERROR
            # the first sample above 0.1 K comes within two HK samples (a 3 K / 15 min ramp: 0.1 K in 30 s)
            assert 0.0 < level[0].t_start_obt - start_obt <= 2 * HK_CADENCE_S
            # the warm row shows in the science data too, once the ramp is up (next chunk)
            bg = events_of(anomaly_day.events, "background", c + 1, Severity.ERROR)
            assert [(e.row, e.column) for e in bg] == [(a.row, -1)]
            assert bg[0].value == pytest.approx(2.0 * a.magnitude, abs=0.6)  # 2 e-/sample/K
        elif a.kind == "bias_jump":
            step = events_of(anomaly_day.events, "bias_step", c, Severity.ERROR)
            level = events_of(anomaly_day.events, "bias_level", c, Severity.ERROR)
            assert [(e.row, e.column) for e in step] == [(a.row, a.column)]
            assert [(e.row, e.column) for e in level] == [(a.row, a.column)]
            assert step[0].value == pytest.approx(a.magnitude, abs=2.0)
            assert step[0].t_start_obt < start_obt <= step[0].t_end_obt  # bracketed by consecutive samples
            assert step[0].t_end_obt - start_obt <= HK_CADENCE_S
        elif a.kind == "focus_drift":
            lsf = events_of(anomaly_day.events, "lsf_width")
            assert lsf and min(e.chunk_id for e in lsf) >= c
            first = min(lsf, key=lambda e: e.t_start_obt)
            bin_s = float(limits["lsf"]["bin_seconds"])
            # sigma grows by 0.4 / 3 h: +1 % (the warning level) 270 s after the start; a bin's median passes
            # it once half of the bin is past that: detection at the end of the first flagged bin
            delay = first.t_start_obt + bin_s - start_obt
            assert 270.0 <= delay <= 270.0 + 2 * bin_s
            assert first.chunk_id == int(np.floor((start_obt + delay - 1.0) / CHUNK_S))
            assert first.chunk_id == c  # this day's drift starts 7.8 min before its chunk ends
            assert max(e.severity for e in events_of(lsf, chunk=c + 1)) >= Severity.ERROR
            assert max(e.severity for e in lsf) == Severity.CRITICAL
            assert max(e.chunk_id for e in lsf) == chunk_of(a.t_end)  # nothing after the refocus


def test_anomaly_day_has_no_unexplained_event(anomaly_day):
    """Everything above warning on the anomaly day belongs to an injected anomaly (kind, place, time)."""
    explained = []
    for e in events_of(anomaly_day.events, min_severity=Severity.ERROR):
        ok = False
        for a in anomaly_day.truth.itertuples():
            end = chunk_of(a.t_end) if np.isfinite(a.t_end) else 10**9
            in_time = chunk_of(a.t_start) <= e.chunk_id <= end + 1
            if a.kind == "temperature_excursion":
                ok |= (
                    in_time
                    and e.row == a.row
                    and e.kind in ("fpa_temperature", "fpa_temperature_rate", "background")
                )
            elif a.kind == "bias_jump":
                ok |= (
                    in_time
                    and (e.row, e.column) == (a.row, a.column)
                    and e.kind in ("bias_step", "bias_level")
                )
            elif a.kind == "focus_drift":
                ok |= in_time and e.kind == "lsf_width"
        explained.append(ok)
    assert explained and all(explained)


def test_clean_day_has_no_event_above_warning(clean_day, limits):
    assert max((e.severity for e in clean_day.events), default=Severity.INFO) <= Severity.WARNING
    # ... because nothing is wrong, not because checks were skipped
    s = clean_day.series
    assert len(s) == 49  # the day spans 49 chunks of 30 min (it starts inside one)
    assert all(x["n_hk_thermal"] > 0 and x["n_hk_bias"] > 0 and x["n_hk_power"] > 0 for x in s)
    lsf = np.array([x["lsf_median"] for x in s])
    np.testing.assert_allclose(lsf, 0.9, atol=0.002)
    bg = np.array([x["background_fp"] for x in s])
    np.testing.assert_allclose(bg, 12.0, atol=0.5)
    assert all(np.isfinite(x["background_row"]).all() for x in s)
    assert max(x["failed_fraction"] for x in s) < float(limits["fits"]["failed_fraction"]["warning"])
    assert sum(x["n_transits"] for x in s) == len(clean_day.packets["star"]["obt"])


def test_report_is_written_with_plots(anomaly_day, limits, tmp_path):
    path = health.write_health_report(anomaly_day.events, anomaly_day.series, tmp_path / "day.html", limits)
    text = path.read_text()
    pngs = [chunk.split("'", 1)[0] for chunk in text.split("data:image/png;base64,")[1:]]
    assert len(pngs) == 8  # timeline, temperatures, mirrors, bias, LSF, background, detections, power/fits
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    for alt in ("fpa_temperature", "bias", "lsf_width", "background", "detections"):
        assert f"alt='{alt}'" in text
    table = text.split("<h2>Events by severity</h2>", 1)[1]
    rows = table.split("<tr style=")[1:]
    assert len(rows) == len(anomaly_day.events)
    order = [r.split("<td>", 2)[1].split("</td>")[0] for r in rows]
    ranks = [Severity.parse(o) for o in order]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] == Severity.CRITICAL
    assert "bias_step" in table and "lsf_width" in table


# --- edge cases with the payload model directly ------------------------------------------------------------
def _chunk_hk(payload: Payload, cid: int) -> dict:
    t0, t1 = chunk_mission_span(cid)
    hk = payload_hk(payload, t0 - HK_CADENCE_S, t1 + HK_CADENCE_S)
    return {k: {f: v[np.floor(d["obt"] / CHUNK_S) == cid] for f, v in d.items()} for k, d in hk.items()}


def test_bias_jump_caught_on_the_first_chunk_of_a_run(limits):
    """A +40 ADU jump before the run's first sample: no step to see, the level alone is an error, on every CCD
    (whatever its own level within 1500 +- 15)."""
    cid = chunk_of(float(from_utc(START))) + 1
    t0, _ = chunk_mission_span(cid)
    for r, c in np.ndindex(ins.N_ROWS, ins.N_CCD_COLUMNS):
        p = Payload(SEED, [Anomaly("bias_jump", t0 - 600.0, np.inf, r, c, 40.0)])
        events, _ = monitor_chunk(cid, {"hk_bias": _chunk_hk(p, cid)["hk_bias"]}, {}, {}, limits)
        bias = events_of(events, ("bias_level", "bias_step"))
        assert [(e.kind, e.row, e.column) for e in bias] == [("bias_level", r, c)]
        assert bias[0].severity >= Severity.ERROR
    # a jump inside the first chunk: also the step
    p = Payload(SEED, [Anomaly("bias_jump", t0 + 900.0, np.inf, 2, 0, 40.0)])
    events, _ = monitor_chunk(cid, _chunk_hk(p, cid), {}, {}, limits)
    assert {(e.kind, e.row, e.column) for e in events_of(events, min_severity=Severity.ERROR)} == {
        ("bias_step", 2, 0),
        ("bias_level", 2, 0),
    }


def test_bias_step_at_a_chunk_boundary_is_seen_from_the_sample_before_the_chunk(limits):
    """The step into a chunk comes from the last bias sample before it in the chunk's input (its context
    packets), so the chunk's events depend on its input alone, not on which chunks were reduced before."""
    cid = chunk_of(float(from_utc(START))) + 5
    t0, t1 = chunk_mission_span(cid)
    first_sample = float(mission_of_obt(_chunk_hk(Payload(SEED, []), cid)["hk_bias"]["obt"][0]))
    # a small jump (8 ADU: within the level tolerance) between the last sample of cid-1 and the first of cid
    p = Payload(SEED, [Anomaly("bias_jump", first_sample - 10.0, np.inf, 6, 9, 8.0)])
    around = payload_hk(p, t0 - 120.0, t1 + 120.0)["hk_bias"]  # the input: context samples around the chunk
    before = health.bias_before(around, cid * CHUNK_S)
    assert before is not None and before["obt"] < cid * CHUNK_S <= before["obt"] + HK_CADENCE_S
    with_before, summary = monitor_chunk(cid, _chunk_hk(p, cid), {}, {}, limits, before=before)
    without, _ = monitor_chunk(cid, _chunk_hk(p, cid), {}, {}, limits)
    step = events_of(with_before, "bias_step")
    assert [(e.row, e.column, e.severity) for e in step] == [(6, 9, Severity.WARNING)]
    assert step[0].value == pytest.approx(8.0, abs=1.0)
    assert step[0].t_start_obt == before["obt"]
    assert summary["bias_max_step"][6, 9] == pytest.approx(8.0, abs=1.0)
    assert events_of(without, "bias_step") == []
    # no sample before the chunk in its input: no step across the boundary
    assert health.bias_before(_chunk_hk(p, cid)["hk_bias"], cid * CHUNK_S) is None


def test_temperature_excursion_late_in_a_chunk(limits):
    """Detection needs a sample 0.1 K up: an excursion starting in the last ~45 s of a chunk is seen in the
    next chunk; 90 s before the end it is seen in its own chunk, the rate already at error."""
    cid = chunk_of(float(from_utc(START))) + 10
    _, t1 = chunk_mission_span(cid)
    for lead, expect in ((90.0, Severity.ERROR), (20.0, None)):
        p = Payload(SEED, [Anomaly("temperature_excursion", t1 - lead, t1 - lead + 7200.0, 4, -1, 3.0)])
        events, _ = monitor_chunk(cid, _chunk_hk(p, cid), {}, {}, limits)
        fpa = events_of(events, ("fpa_temperature", "fpa_temperature_rate"))
        assert max((e.severity for e in fpa), default=None) == expect
        assert all(e.row == 4 for e in fpa)
        if expect is None:
            later, _ = monitor_chunk(cid + 1, _chunk_hk(p, cid + 1), {}, {}, limits)
            assert max(e.severity for e in events_of(later, "fpa_temperature")) >= Severity.ERROR


def test_power_and_mirror_limits(limits):
    cid = chunk_of(float(from_utc(START))) + 3
    hk = _chunk_hk(Payload(SEED, []), cid)
    events, _ = monitor_chunk(cid, hk, {}, {}, limits)
    assert events == []
    hk["hk_power"]["values"][20:, 3] *= 0.94  # ccd_vod sags by 6 %
    hk["hk_thermal"]["temps"][30:, 8] += 0.3  # M2 warms by 0.3 K
    events, _ = monitor_chunk(cid, hk, {}, {}, limits)
    got = {(e.kind, e.severity, e.detail.split(" ")[0]) for e in events}
    assert got == {("power", Severity.ERROR, "ccd_vod"), ("mirror_temperature", Severity.ERROR, "mirror")}
    assert "M2" in events_of(events, "mirror_temperature")[0].detail


def test_detection_deficit_and_failed_fits(clean_day, limits):
    """Real windows of a clean chunk, with one row losing detections and then with truncated windows."""
    parts = health.split_by_chunk(clean_day.packets)
    cid = max(parts, key=lambda c: len(parts[c].get("star", {}).get("obt", [])))
    star, hk = parts[cid]["star"], {k: parts[cid][k] for k in health.HK_KINDS}
    counts = health.detection_counts(star["fov"], star["row"])
    fov = int(np.argmax(counts.sum(axis=1)))
    drop = (star["fov"] == fov) & (star["row"] == 3) & (np.arange(len(star["obt"])) % 10 != 0)
    thinned = {k: v[~drop] for k, v in star.items()}
    windows, transits = health.chunk_science(thinned, clean_day.packets["hk_bias"], lsf=False)
    events, summary = monitor_chunk(cid, hk, windows, transits, limits)
    det = events_of(events, "detections")
    assert [(e.row, e.severity) for e in det] == [(3, Severity.ERROR)]
    assert f"FoV {fov} row 3" in det[0].detail
    assert summary["detections"][fov, 3] == counts[fov, 3] - drop.sum()

    broken = {k: v.copy() for k, v in star.items()}
    bad = np.arange(len(broken["obt"])) % 10 == 0  # a tenth of the packets keep only 3 samples per window
    broken["samples"][bad, :, 3:] = 0
    windows, transits = health.chunk_science(broken, clean_day.packets["hk_bias"], lsf=False)
    events, summary = monitor_chunk(cid, hk, windows, transits, limits)
    assert summary["failed_fraction"] == pytest.approx(bad.mean(), abs=0.01)
    kinds = {(e.kind, e.severity) for e in events}
    assert ("failed_fits", Severity.ERROR) in kinds and ("failed_transits", Severity.ERROR) in kinds
