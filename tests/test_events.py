import numpy as np
import pytest

from pipeline import instrument as ins
from pipeline.simulate import events as ev


def test_paczynski_magnification_known_values():
    # A(u) = (u^2+2)/(u sqrt(u^2+4)): A(1) = 3/sqrt(5); at t0 with u0 = 0.1, A ~ 10.04
    assert ev.paczynski(np.array([0.0]), 0.0, 10.0, 1.0)[0] == pytest.approx(3 / np.sqrt(5))
    assert ev.paczynski(np.array([0.0]), 0.0, 10.0, 0.1)[0] == pytest.approx(10.0375, rel=1e-4)
    far = ev.paczynski(np.array([1000.0]), 0.0, 10.0, 0.5)[0]
    assert far == pytest.approx(1.0, abs=1e-4)


def test_events_are_deterministic_and_independent_of_the_query():
    sid = np.arange(1, 50001, dtype=np.int64) * 7919
    g0 = np.full(len(sid), 17.0)
    t = np.full(len(sid), 2.1e8)
    f1, e1, _b1 = ev.apply_events(3, 2e-3, sid, g0, t)
    f2, e2, _b2 = ev.apply_events(3, 2e-3, sid[::-1], g0, t)
    assert np.array_equal(f1, f2[::-1]) and np.array_equal(e1, e2[::-1])
    assert (e1 != 0).any()
    # another seed gives other events
    _, e3, _ = ev.apply_events(4, 2e-3, sid, g0, t)
    assert not np.array_equal(e1 != 0, e3 != 0)


def test_event_rate_controls_how_many_sources_change():
    sid = np.arange(1, 200001, dtype=np.int64)
    g0 = np.full(len(sid), 17.0)
    t = np.full(len(sid), 2.1e8)
    _, quiet, _ = ev.apply_events(1, 0.0, sid, g0, t)
    assert (quiet == 0).all()
    _, some, _ = ev.apply_events(1, 1e-2, sid, g0, t)
    assert 0.005 < (some != 0).mean() < 0.06


def test_each_event_kind_changes_the_light_curve_as_documented():
    days = np.arange(-200, 200, 0.5)
    for kind in ("microlensing", "supernova", "outburst", "fading"):
        p = {
            k: np.full(len(days), v)
            for k, v in {
                "t0_days": 0.0,
                "te_days": 20.0,
                "u0": 0.1,
                "peak_g": 17.0,
                "amplitude_mag": 3.0,
                "tau_rise_days": 2.0,
                "tau_fall_days": 20.0,
            }.items()
        }
        p["kind"] = np.full(len(days), ev.KIND_CODE[kind])
        factor, added = ev._flux_terms(p, days)
        f0 = ins.flux_e_s(18.0)
        dm = -2.5 * np.log10((f0 * factor + added) / f0)
        if kind == "fading":
            assert dm.max() == pytest.approx(3.0, abs=0.01)
        else:
            assert dm.min() < -1.0
        assert abs(dm[0]) < 0.05 and abs(dm[-1]) < 0.1  # quiet long before and long after


def test_new_sources_are_reproducible_and_carry_their_birth_bin():
    a = ev.new_sources(5, 0.1, 10.0, np.array([24, 25]))
    b = ev.new_sources(5, 0.1, 10.0, np.array([25]))
    assert len(a["source_id"]) > 100
    in25 = ev.new_source_bin(a["source_id"]) == 25
    assert np.array_equal(a["source_id"][in25], b["source_id"])
    assert set(ev.new_source_bin(a["source_id"])) == {24, 25}
    assert len(np.unique(a["source_id"])) == len(a["source_id"])
    _flux, eid, ebin = ev.apply_events(
        5,
        0.0,
        a["source_id"],
        np.full(len(a["source_id"]), np.inf),
        (ebin_t := (ev.new_source_bin(a["source_id"]) + 0.5) * ev.EVENT_BIN_S),
    )
    assert (eid != 0).all() and np.array_equal(ebin, ev.new_source_bin(a["source_id"]))
    assert np.isfinite(ebin_t).all()


def test_quiet_scatter_plus_photon_noise_gives_hodgkin():
    g = np.array([13.0, 16.0, 19.0, 20.5])
    photon = np.array([0.001, 0.004, 0.01, 0.03])
    extra = ev.quiet_scatter_sigma(g, photon)
    assert np.allclose(np.hypot(extra, photon), ins.hodgkin_sigma_g(g))
