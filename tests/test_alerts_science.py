"""Science of the photometric alerts on synthetic histories built in numpy (pipeline.alerts).

Quiet stars scatter with the Hodgkin et al. (2021) per-transit error; events are injected into the new
visit. Each detector and each filter must do what it says, a quiet population of 10^6 source-visits must
raise nothing at the default thresholds, and the vectorised evaluation of many sources must equal the
evaluation of each source alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.alerts.detect import DETECTORS, Verdicts, evaluate
from pipeline.alerts.filters import FILTER_NAMES
from pipeline.alerts.history import History, HistoryError, Sources
from pipeline.alerts.stats import segment_median, source_stats
from pipeline.alerts.thresholds import Thresholds, ThresholdsError, load_thresholds
from pipeline.instrument import BASIC_ANGLE_DEG, SPIN_RATE_ARCSEC_S, hodgkin_sigma_g
from pipeline.reduce.image_params import FLAG_NO_GOOD_WINDOWS, FLAG_SATURATED

TH = load_thresholds()
PAIR_S = BASIC_ANGLE_DEG * 3600.0 / SPIN_RATE_ARCSEC_S  # preceding -> following field of view
VISIT_GAP_S = 30 * 86400.0


def population(rng, g0, n_visits=8, new_visits=1, fovs=(0, 1), first_id=1000):
    """Quiet stars: one row per transit, n_visits visits of len(fovs) transits each (the last new_visits
    new), G scattered with the Hodgkin error. Returns the History columns as a dict (mutable)."""
    g0 = np.asarray(g0, dtype=float)
    n = g0.size
    per = n_visits * len(fovs)
    sid = np.repeat(first_id + np.arange(n, dtype=np.int64) * 3, per)
    visit = np.tile(np.repeat(np.arange(n_visits), len(fovs)), n)
    fov = np.tile(np.asarray(fovs, dtype=np.int16), n * n_visits)
    t = visit * VISIT_GAP_S + fov * PAIR_S + np.repeat(rng.uniform(0, 1e6, n), per)
    g = np.repeat(g0, per)
    g = g + rng.normal(0.0, 1.0, g.size) * hodgkin_sigma_g(g)
    return {
        "source_id": sid,
        "t": t,
        "g_mag": g,
        "g_mag_err": hodgkin_sigma_g(g),
        "fov": fov,
        "flags": np.zeros(g.size, np.int32),
        "new": visit >= n_visits - new_visits,
        "bad_chunk": np.zeros(g.size, bool),
    }


def one(rng, g0=16.0, **kw) -> dict:
    return population(rng, [g0], **kw)


def run(cols: dict, g_ref=None, brighter_neighbour=None, th: Thresholds = TH) -> Verdicts:
    h = History.from_rows(**cols)
    ids = np.unique(h.source_id)
    if g_ref is None:
        # catalogue sources: their mean magnitude is in the catalogue
        g_ref = np.array([np.nanmean(h.g_mag[h.source_id == s]) for s in ids]) if len(ids) < 50 else None
    src = Sources.from_rows(source_id=ids, g_ref=g_ref, brighter_neighbour=brighter_neighbour)
    return evaluate(h, src, th)


def only(v: Verdicts) -> dict:
    assert len(v) == 1, v.rows()
    return v.rows()[0]


# --- detectors ----------------------------------------------------------------------------------------------
def test_brightening_raised_with_trigger_and_history():
    rng = np.random.default_rng(1)
    c = one(rng, 16.0)
    c["g_mag"][c["new"]] -= 1.5
    r = only(run(c))
    assert r["detector"] == "brightening" and r["rejected_by"] == ""
    first_new = np.flatnonzero(c["new"])[0]
    assert r["t_trigger"] == c["t"][first_new] and r["alert_mag"] == c["g_mag"][first_new]
    assert abs(r["historic_mag"] - 16.0) < 0.02 and 0 < r["historic_std"] < 0.03
    assert r["n_historic"] == 14 and r["significance"] > TH.min_significance


def test_fading_raised():
    rng = np.random.default_rng(2)
    c = one(rng, 17.0)
    c["g_mag"][c["new"]] += 1.2
    r = only(run(c))
    assert r["detector"] == "fading" and r["rejected_by"] == ""
    assert r["alert_mag"] > r["historic_mag"] + 1.0


def test_small_or_insignificant_changes_not_raised():
    rng = np.random.default_rng(3)
    c = one(rng, 16.0)
    c["g_mag"][c["new"]] -= 0.5 * TH.min_delta_mag  # many sigma, but below the magnitude floor
    assert len(run(c)) == 0
    c = one(rng, 20.5)  # sigma_G = 0.065: 0.31 mag is about 4 sigma
    c["g_mag"][c["new"]] = 20.5 - 0.31
    assert len(run(c)) == 0


def test_single_transit_outlier_not_raised():
    """Only one of the two field-of-view transits jumps: the other telescope does not confirm it."""
    rng = np.random.default_rng(4)
    c = one(rng, 15.0)
    c["g_mag"][np.flatnonzero(c["new"])[0]] -= 2.0
    assert len(run(c)) == 0
    c = one(rng, 15.0, fovs=(0,))  # a visit with one transit cannot raise brightening at all
    c["g_mag"][c["new"]] -= 2.0
    assert len(run(c)) == 0


def test_too_little_history_not_compared_unless_catalogue():
    rng = np.random.default_rng(5)
    c = one(rng, 16.0, n_visits=2)  # 2 historic transits < min_historic
    c["g_mag"][c["new"]] -= 2.0
    assert len(run(c, g_ref=np.array([np.nan]))) == 0
    r = only(run(c, g_ref=np.array([16.0])))  # the catalogue G is the reference
    assert r["detector"] == "brightening" and r["historic_mag"] == 16.0 and np.isnan(r["historic_std"])


def test_new_source_both_fields_of_view():
    rng = np.random.default_rng(6)
    c = one(rng, 18.0, n_visits=1)
    r = only(run(c, g_ref=np.array([np.nan])))
    assert r["detector"] == "new_source" and r["rejected_by"] == ""
    assert np.isnan(r["historic_mag"]) and np.isnan(r["historic_std"]) and r["n_historic"] == 0
    assert r["t_trigger"] == c["t"].min() and r["significance"] > 20


def test_new_source_one_field_of_view_rejected():
    rng = np.random.default_rng(7)
    c = one(rng, 18.0, n_visits=1, fovs=(1,))
    r = only(run(c, g_ref=np.array([np.nan])))
    assert r["detector"] == "new_source" and r["rejected_by"] == "single_fov"


def test_new_source_limits():
    rng = np.random.default_rng(8)
    faint = one(rng, TH.new_source_max_g + 0.3, n_visits=1)
    assert len(run(faint, g_ref=np.array([np.nan]))) == 0
    known = one(rng, 18.0, n_visits=1)  # in the catalogue: not new
    assert len(run(known, g_ref=np.array([18.0]))) == 0
    seen = one(rng, 18.0, n_visits=3)  # good historic transits: not new
    assert len(run(seen, g_ref=np.array([np.nan]))) == 0
    # historic transits without a magnitude (no usable measurement) are no history
    blank = one(rng, 18.0, n_visits=3)
    blank["g_mag"][~blank["new"]] = np.nan
    assert only(run(blank, g_ref=np.array([np.nan])))["detector"] == "new_source"


# --- filters ------------------------------------------------------------------------------------------------
def test_variable_history_filter():
    rng = np.random.default_rng(9)
    c = one(rng, 15.0, n_visits=12)
    hist = ~c["new"]
    c["g_mag"][hist] = 15.0 + rng.normal(0, 0.15, hist.sum())  # 14x the error model at G = 15
    c["g_mag"][c["new"]] = 13.0
    r = only(run(c))
    assert r["detector"] == "brightening" and r["rejected_by"] == "variable_history"
    assert r["historic_std"] > TH.variable_scatter_ratio * hodgkin_sigma_g(15.0)


def test_variable_star_excursion_within_its_scatter_not_raised():
    """The significance divides by the source's own scatter: a 1.5-mag swing of a 0.5-mag variable is
    3 sigma."""
    rng = np.random.default_rng(10)
    c = one(rng, 15.0, n_visits=20)
    hist = ~c["new"]
    c["g_mag"][hist] = 15.0 + rng.normal(0, 0.5, hist.sum())
    c["g_mag"][c["new"]] = 13.5
    assert len(run(c)) == 0


def test_quality_flags_filter_and_failed_transits():
    rng = np.random.default_rng(11)
    c = one(rng, 16.0)
    c["g_mag"][c["new"]] -= 1.5
    c["flags"][np.flatnonzero(c["new"])[1]] = FLAG_SATURATED
    assert only(run(c))["rejected_by"] == "quality_flags"
    # a transit without any good window is no measurement: one good new transit is left, too few
    c["flags"][np.flatnonzero(c["new"])[1]] = FLAG_NO_GOOD_WINDOWS
    assert len(run(c)) == 0


def test_bad_chunk_filter():
    rng = np.random.default_rng(12)
    c = one(rng, 16.0)
    c["g_mag"][c["new"]] -= 1.5
    c["bad_chunk"][np.flatnonzero(c["new"])[0]] = True
    assert only(run(c))["rejected_by"] == "bad_chunk"
    c["bad_chunk"][:] = False
    c["bad_chunk"][np.flatnonzero(~c["new"])[0]] = True  # a historic transit's chunk does not matter
    assert only(run(c))["rejected_by"] == ""


def test_bright_neighbour_filter():
    rng = np.random.default_rng(13)
    c = one(rng, 16.0)
    c["g_mag"][c["new"]] += 1.5
    r = only(run(c, g_ref=np.array([16.0]), brighter_neighbour=np.array([True])))
    assert r["detector"] == "fading" and r["rejected_by"] == "bright_neighbour"


def test_every_applicable_filter_is_named_in_order():
    rng = np.random.default_rng(14)
    c = one(rng, 18.0, n_visits=1, fovs=(0,))
    c["bad_chunk"][:] = True
    c["flags"][:] = FLAG_SATURATED
    r = only(run(c, g_ref=np.array([np.nan]), brighter_neighbour=np.array([True])))
    assert r["rejected_by"] == "single_fov,bright_neighbour,quality_flags,bad_chunk"
    assert set(r["rejected_by"].split(",")) <= set(FILTER_NAMES)


# --- populations --------------------------------------------------------------------------------------------
def test_quiet_population_raises_nothing():
    """10^6 source-visits of quiet catalogue stars (G 10-20.7, Hodgkin noise, both fields of view): no verdict
    at all at the default thresholds, not even a filtered one."""
    rng = np.random.default_rng(2021)
    total = 0
    for batch in range(5):
        g0 = rng.uniform(10.0, 20.7, 200_000)
        c = population(rng, g0, n_visits=3, first_id=batch * 10_000_000)
        h = History.from_rows(**c)
        src = Sources.from_rows(source_id=np.unique(h.source_id), g_ref=g0)
        v = evaluate(h, src, TH)
        assert len(v) == 0, v.take(slice(0, 5)).rows()
        total += g0.size
    assert total >= 1_000_000


def mixed_population(rng):
    """Quiet stars, brightenings, fades, new sources (one and two fields of view), variables, flagged and
    bad-chunk transits, with shuffled interleaved ids."""
    parts = []
    n = 60
    q = population(rng, rng.uniform(12, 20.5, n), n_visits=6, first_id=1)
    kind = rng.integers(0, 6, n)
    per = 12
    for k in range(n):
        rows = slice(k * per, (k + 1) * per)
        new = q["new"][rows]
        g = q["g_mag"][rows]
        if kind[k] == 1:
            g[new] -= rng.uniform(0.5, 3.0)
        elif kind[k] == 2:
            g[new] += rng.uniform(0.5, 2.0)
        elif kind[k] == 3:
            g[~new] += rng.normal(0, 0.3, (~new).sum())
            g[new] -= 2.5
        elif kind[k] == 4:
            q["flags"][rows][new] = FLAG_SATURATED
            g[new] -= 1.5
        elif kind[k] == 5:
            q["bad_chunk"][rows][new] = True
            g[new] += 1.5
    parts.append(q)
    for fovs in ((0, 1), (1,)):
        ns = population(rng, rng.uniform(15, 19.5, 10), n_visits=2, fovs=fovs, first_id=2)
        ns["g_mag"][~ns["new"]] = np.nan
        parts.append(ns)
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    # shuffle the ids (interleaved, not in block order) and the row order
    ids = np.unique(cols["source_id"])
    new_ids = rng.permutation(ids.size).astype(np.int64) * 11 + 5
    cols["source_id"] = new_ids[np.searchsorted(ids, cols["source_id"])]
    perm = rng.permutation(cols["t"].size)
    return {k: v[perm] for k, v in cols.items()}


def test_many_sources_equal_each_source_alone():
    rng = np.random.default_rng(15)
    cols = mixed_population(rng)
    h = History.from_rows(**cols)
    ids = np.unique(h.source_id)
    g_ref = np.where(rng.random(ids.size) < 0.7, 16.0, np.nan)
    neigh = rng.random(ids.size) < 0.1
    src = Sources.from_rows(source_id=ids, g_ref=g_ref, brighter_neighbour=neigh)
    together = evaluate(h, src, TH)
    assert set(together.detector) == set(DETECTORS)  # the population exercises every detector
    assert np.any(together.rejected_by == "") and np.any(together.rejected_by != "")
    alone = []
    for k, s in enumerate(ids):
        hs = h.select_sources([s])
        one_src = Sources.from_rows(
            source_id=[s], g_ref=g_ref[k : k + 1], brighter_neighbour=neigh[k : k + 1]
        )
        alone.extend(evaluate(hs, one_src, TH).rows())
    assert together.rows() == alone or _rows_equal(together.rows(), alone)


def _rows_equal(a: list[dict], b: list[dict]) -> bool:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in x:
            if isinstance(x[key], float):
                assert (np.isnan(x[key]) and np.isnan(y[key])) or x[key] == y[key], (key, x, y)
            else:
                assert x[key] == y[key], (key, x, y)
    return True


# --- statistics ---------------------------------------------------------------------------------------------
def test_segment_median_matches_numpy():
    rng = np.random.default_rng(16)
    seg = np.sort(rng.integers(0, 50, 2000))
    values = rng.normal(0, 1, seg.size)
    mask = rng.random(seg.size) < 0.7
    med = segment_median(values, seg, 52, mask)
    for s in range(52):
        sel = (seg == s) & mask
        if sel.any():
            assert med[s] == pytest.approx(np.median(values[sel]))
        else:
            assert np.isnan(med[s])


def test_historic_statistics_are_robust_and_per_source():
    rng = np.random.default_rng(17)
    c = population(rng, [15.0, 18.0], n_visits=10)
    rows0 = np.flatnonzero((c["source_id"] == c["source_id"][0]) & ~c["new"])
    c["g_mag"][rows0[3]] = 12.0  # one wild historic point
    c["g_mag"][rows0[4]] = np.nan  # one missing
    st = source_stats(History.from_rows(**c), TH.failure_flags, TH.historic_clip_sigma)
    assert st.n_historic_good.tolist() == [17, 18] and st.n_historic.tolist() == [16, 18]
    assert abs(st.historic_mag[0] - 15.0) < 0.01 and st.historic_std[0] < 0.02
    good0 = np.delete(rows0, [3, 4])
    assert st.historic_mag[0] == pytest.approx(np.mean(c["g_mag"][good0]), abs=1e-3)
    assert st.historic_std[0] == pytest.approx(np.std(c["g_mag"][good0], ddof=1), rel=1e-4)
    assert st.n_new.tolist() == [2, 2] and st.n_new_fov.tolist() == [2, 2]


# --- inputs -------------------------------------------------------------------------------------------------
def test_history_validates_and_sorts():
    h = History.from_rows(source_id=[5, 2, 5], t=[3.0, 1.0, 1.0], g_mag=[15, 16, 15.1], fov=[0, 1, 1])
    assert h.source_id.tolist() == [2, 5, 5] and h.t.tolist() == [1.0, 1.0, 3.0]
    assert h.g_mag_err[0] == pytest.approx(hodgkin_sigma_g(16.0)) and h.flags.dtype == np.int32
    with pytest.raises(HistoryError, match=r"History.t has 2 rows, expected 3"):
        History.from_rows(source_id=[1, 2, 3], t=[1.0, 2.0], g_mag=[1, 2, 3], fov=[0, 0, 0])
    with pytest.raises(HistoryError, match="unknown column"):
        History.from_rows(source_id=[1], t=[1.0], g_mag=[1.0], fov=[0], gmag=[1.0])
    with pytest.raises(HistoryError, match=r"History.source_id must hold integers"):
        History.from_rows(source_id=[1.5], t=[1.0], g_mag=[1.0], fov=[0])
    with pytest.raises(HistoryError, match="finite"):
        History.from_rows(source_id=[1], t=[np.nan], g_mag=[1.0], fov=[0])
    h = History.from_rows(source_id=[1, 2], t=[0.0, 0.0], g_mag=[15.0, 15.0], fov=[0, 1])
    with pytest.raises(HistoryError, match="no row for source 2"):
        evaluate(h, Sources.from_rows(source_id=[1]), TH)
    with pytest.raises(HistoryError, match="unique"):
        Sources.from_rows(source_id=[1, 1])
    assert len(evaluate(History.empty(), Sources.from_rows(source_id=[]), TH)) == 0


def test_thresholds_defaults_override_and_errors(tmp_path):
    th = load_thresholds()
    assert isinstance(th.neighbour_radius_arcsec, float) and th.min_health_severity in (
        "info",
        "warning",
        "error",
        "critical",
    )
    assert th.new_source_max_g == 19.0 and "thresholds.yaml" in th.source_file
    over = tmp_path / "mine.yaml"
    over.write_text("min_significance: 7\nmin_health_severity: warning\n")
    t2 = load_thresholds(over)
    assert t2.min_significance == 7.0 and t2.min_health_severity == "warning"
    assert t2.min_delta_mag == th.min_delta_mag and str(over) in t2.source_file
    assert t2.as_dict()["min_significance"] == 7.0
    for text, match in (
        ("min_signifcance: 7\n", "unknown threshold 'min_signifcance'"),
        ("min_historic: many\n", "must be a int"),
        ("min_health_severity: severe\n", "min_health_severity must be one of"),
        ("- 1\n", "must be a YAML mapping"),
        ("min_fovs: 0\n", "min_fovs must be at least 1"),
    ):
        over.write_text(text)
        with pytest.raises(ThresholdsError, match=match):
            load_thresholds(over)
    with pytest.raises(ThresholdsError, match="cannot read"):
        load_thresholds(tmp_path / "absent.yaml")
    # thresholds change what is raised
    rng = np.random.default_rng(18)
    c = one(rng, 16.0)
    c["g_mag"][c["new"]] -= 1.5
    assert len(run(c, th=dataclasses.replace(th, min_delta_mag=2.0))) == 0
