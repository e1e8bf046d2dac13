"""Transit cadence: the transit finder against brute force, a real Gaia light curve, and the 5-year mean.

Gaia16aye (a Galactic-plane microlensing event, Gaia Science Alerts) has a light curve whose every row is
a real Gaia transit (2014-10-30 .. 2019-08-27). Its consecutive spacings within a visit are the basic
angle (106.5 min, preceding -> following FoV) and the rest of the spin (253.5 min, following -> next
preceding); visits recur with the 63-day precession, two per precession loop, so the separation between a
visit and the next-but-one is one loop: the median of these lag-2 separations is our revisit statistic.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pipeline.instrument import (
    BASIC_ANGLE_DEG,
    FOV_AC_WIDTH_DEG,
    ONBOARD_LOSS_FRACTION,
    SPIN_PERIOD_S,
)
from pipeline.mission_time import DAY_S, from_utc
from pipeline.simulate.scanlaw import FOV_AZIMUTH_RAD, JULIAN_YEAR_S, ScanLaw, wrap_pi
from pipeline.simulate.sky import radec_to_xyz
from pipeline.simulate.transits import find_transits

ALERTS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gaia-alerts"
PRECESSION_PERIOD_DAYS = 365.25 / 5.8  # 62.97
GROUP_GAP_DAYS = 3.0


def _unit(n: int, seed: int) -> np.ndarray:
    u = np.random.default_rng(seed).normal(size=(n, 3))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


# --- the transit finder -------------------------------------------------------------------------------
def test_find_transits_matches_brute_force():
    law = ScanLaw(nu0=1.0, omega0=0.5)
    t0 = law.t_ref + 40 * DAY_S
    t1 = t0 + 1800.0
    # sources scattered around the scan band of this half hour, plus random ones
    x, y, z = law.frame(np.array([t0 + 900.0]))
    ang = np.random.default_rng(1).uniform(0, 2 * np.pi, 3000)
    off = np.deg2rad(np.random.default_rng(2).uniform(-0.6, 0.6, 3000))
    u = (
        np.cos(off)[:, None] * (np.cos(ang)[:, None] * x + np.sin(ang)[:, None] * y)
        + np.sin(off)[:, None] * z
    )
    u = np.vstack([u, _unit(2000, 3)])
    tr = find_transits(law, u, t0, t1)
    assert np.all(np.diff(tr["t"]) >= 0)
    assert np.all((tr["t"] >= t0) & (tr["t"] < t1))
    eta, zeta = law.field_angles(u[tr["idx"]], tr["t"], tr["fov"])
    assert np.all(np.abs(eta) < 1e-7)
    np.testing.assert_allclose(zeta, tr["zeta_deg"], atol=1e-12)
    assert np.all(np.abs(tr["zeta_deg"]) < FOV_AC_WIDTH_DEG / 2)
    # brute force: attitude every 0.5 s, sign changes of eta
    step = 0.5
    tt = np.arange(t0, t1 + step, step)
    bx, by, bz = law.frame(tt)
    phi = np.arctan2(u @ by.T, u @ bx.T)
    zeta_b = np.rad2deg(np.arcsin(u @ bz.T))
    found = []
    for fov in (0, 1):
        e = wrap_pi(FOV_AZIMUTH_RAD[fov] - phi)
        i, k = np.nonzero((e[:, :-1] < 0) & (e[:, 1:] >= 0) & (np.abs(e[:, :-1]) < 0.1))
        k_cross = np.where(np.abs(e[i, k]) < np.abs(e[i, k + 1]), k, k + 1)
        ok = (np.abs(zeta_b[i, k_cross]) < FOV_AC_WIDTH_DEG / 2 - 1e-4) & (tt[k] < t1 - step)
        found += [(a, fov, t) for a, t in zip(i[ok], tt[k[ok]], strict=True)]
    assert len(found) > 200
    got = {(int(a), int(f)): t for a, f, t in zip(tr["idx"], tr["fov"], tr["t"], strict=True)}
    for a, fov, t in found:
        assert (a, fov) in got
        assert t <= got[(a, fov)] <= t + step
    # and nothing found that brute force cannot see (away from the band and interval edges)
    assert len(tr) - len(found) <= 0.01 * len(tr) + 5


def test_the_following_fov_sees_a_source_106_5_minutes_later_then_the_preceding_253_5_minutes_after():
    law = ScanLaw()
    t = law.t_ref + 123.4 * DAY_S
    _, _, z0 = law.frame(np.array([t]))
    _, _, z1 = law.frame(np.array([t + 60.0]))
    u = np.cross(z0, z1)  # on the scan circle, where the spin axis motion leaves zeta unchanged
    u /= np.linalg.norm(u)
    tr = find_transits(law, u, t, t + 3 * SPIN_PERIOD_S)
    assert len(tr) == 6
    fov = tr["fov"].astype(int)
    assert np.all(np.diff(fov) != 0)  # alternating FoVs
    d = np.diff(tr["t"]) / 60.0
    after_preceding = d[fov[:-1] == 0]
    after_following = d[fov[:-1] == 1]
    gamma_over_omega = np.deg2rad(BASIC_ANGLE_DEG) / (2 * np.pi) * SPIN_PERIOD_S / 60
    np.testing.assert_allclose(after_preceding, gamma_over_omega, atol=0.01)
    np.testing.assert_allclose(after_preceding, 106.5, atol=0.1)
    np.testing.assert_allclose(after_following, 253.5, atol=0.2)


# --- the real light curve -----------------------------------------------------------------------------
def _alert_position(name: str) -> tuple[float, float]:
    with open(ALERTS / "alerts.csv", newline="") as f:
        reader = csv.reader(f, skipinitialspace=True)
        header = [h.lstrip("#").strip() for h in next(reader)]
        i_name, i_ra, i_dec = header.index("Name"), header.index("RaDeg"), header.index("DecDeg")
        for row in reader:
            if row and row[i_name] == name:
                return float(row[i_ra]), float(row[i_dec])
    raise KeyError(name)


def _lightcurve_times(name: str) -> np.ndarray:
    lines = (ALERTS / "lightcurves" / f"{name}.csv").read_text().splitlines()
    assert lines[0].strip() == name and lines[1].startswith("#Date")
    stamps = [ln.split(",")[0].strip().replace(" ", "T") for ln in lines[2:] if ln.strip()]
    return np.sort(from_utc(np.array(stamps)))


def _cadence(t: np.ndarray) -> dict:
    d = np.diff(np.sort(t))
    short = d[d < 0.5 * DAY_S] / 60.0
    n106 = int((np.abs(short - 106.5) < 1.0).sum())
    n253 = int((np.abs(short - 253.5) < 1.5).sum())
    starts = np.r_[t[0], t[1:][np.diff(t) > GROUP_GAP_DAYS * DAY_S]]
    lag2 = (starts[2:] - starts[:-2]) / DAY_S
    return {
        "n": len(t),
        "n_short": len(short),
        "n106": n106,
        "n253": n253,
        "frac106": n106 / max(n106 + n253, 1),
        "groups": len(starts),
        "revisit_days": float(np.median(lag2)),
    }


@pytest.fixture(scope="module")
def gaia16aye():
    # the real Gaia data sits in shared/ beside the checkout (as in CI); missing data is a failure
    assert (ALERTS / "alerts.csv").exists(), f"shared test data not found at {ALERTS}"
    ra, dec = _alert_position("Gaia16aye")
    t_real = _lightcurve_times("Gaia16aye")
    u = radec_to_xyz(ra, dec)[None, :]
    tr = find_transits(ScanLaw(), u, t_real[0] - DAY_S, t_real[-1] + DAY_S)
    t_sim = tr["t"][tr["on_ccd"]]
    return _cadence(t_real), _cadence(t_sim)


def test_real_light_curve_shows_the_basic_angle_and_spin_spacings(gaia16aye):
    real, _ = gaia16aye
    assert real["n"] == 116
    assert real["n106"] >= 20 and real["n253"] >= 10
    # nearly every within-visit spacing is one of the two (the rest are 360 min: a missed transit)
    assert real["n106"] + real["n253"] >= 0.9 * real["n_short"]


def test_simulated_cadence_matches_the_real_one(gaia16aye):
    real, sim = gaia16aye
    assert sim["n106"] >= 20 and sim["n253"] >= 10
    assert sim["n106"] + sim["n253"] >= 0.9 * sim["n_short"]
    assert sim["frac106"] == pytest.approx(real["frac106"], abs=0.15)  # real 0.69
    assert sim["n"] == pytest.approx(real["n"], rel=0.3)
    assert sim["groups"] == pytest.approx(real["groups"], rel=0.25)


def test_revisits_reflect_the_63_day_precession(gaia16aye):
    real, sim = gaia16aye
    assert real["revisit_days"] == pytest.approx(PRECESSION_PERIOD_DAYS, abs=4.0)  # 63.2 d
    assert sim["revisit_days"] == pytest.approx(PRECESSION_PERIOD_DAYS, abs=4.0)


# --- the five-year mean --------------------------------------------------------------------------------
def test_five_year_mean_number_of_usable_transits_is_about_70():
    law = ScanLaw()
    n = 3000
    u = _unit(n, 2024)
    tr = find_transits(law, u, law.t_ref, law.t_ref + 5 * JULIAN_YEAR_S)
    usable = tr["on_ccd"].sum() * (1 - ONBOARD_LOSS_FRACTION) / n
    assert usable == pytest.approx(70.0, rel=0.15)
    # the geometric mean is fixed by the swept area: 2 FoVs x 0.7 deg x 360 deg per spin, over the sky
    sky_deg2 = 4 * np.pi * (180 / np.pi) ** 2
    swept = 2 * FOV_AC_WIDTH_DEG * 360.0 * (5 * JULIAN_YEAR_S / SPIN_PERIOD_S) / sky_deg2
    assert len(tr) / n == pytest.approx(swept, rel=0.03)
