"""Attitude interpolation and OBT-UTC time correlation against the scanning law and the clock model."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import instrument as ins
from pipeline.mission_time import obt_of
from pipeline.reduce.attitude import (
    Attitude,
    AttitudeGapError,
    NoTimeCorrelation,
    TimeCorrelation,
    qmul,
    slerp,
    z_rotation,
)
from pipeline.simulate.scanlaw import ScanLaw

MAS = np.deg2rad(1.0 / 3.6e6)
SCAN = ScanLaw()
T0 = SCAN.t_ref + 86400.0 * 100.7


def _frame_error_mas(att: Attitude, t: np.ndarray) -> np.ndarray:
    """Largest axis error (mas) of the interpolated frame against the scanning law at mission times t."""
    x, y, z = att.frame(obt_of(t))
    X, Y, Z = SCAN.frame(t)
    err = [np.linalg.norm(a - b, axis=1) for a, b in ((x, X), (y, Y), (z, Z))]
    return np.maximum.reduce(err) / MAS


def _samples(t0: float, t1: float, step: float = 4.0):
    ta = np.arange(t0, t1, step)
    return ta, obt_of(ta), SCAN.quaternion(ta)


# --- time correlation ------------------------------------------------------------------------------------
def test_time_correlation_exact_clock_model():
    tc = np.arange(T0, T0 + 86400.0, 60.0)
    fit = TimeCorrelation.fit(obt_of(tc), tc)
    assert fit.n_outliers == 0
    assert fit.rms_s < 1e-7
    assert abs(fit.clock_rate - ins.OBT_RATE) < 1e-12
    t = np.linspace(T0, T0 + 86400.0, 1001)
    assert np.abs(fit.utc_of_obt(obt_of(t)) - t).max() < 1e-6
    assert np.abs(fit.obt_of_utc(t) - obt_of(t)).max() < 1e-6
    obt = obt_of(t)
    assert np.abs(fit.obt_of_utc(fit.utc_of_obt(obt)) - obt).max() < 1e-6


def test_time_correlation_robust_to_outliers():
    rng = np.random.default_rng(3)
    tc = np.arange(T0, T0 + 6 * 3600.0, 60.0)
    utc = tc + rng.normal(0.0, 10e-6, len(tc))  # 10 us of jitter
    bad = np.array([5, 100, 250])
    utc[bad] += np.array([0.5, -2.0, 100.0])
    fit = TimeCorrelation.from_packets({"obt": obt_of(tc), "utc": utc})
    assert fit.n_outliers == 3
    assert not fit.inliers[bad].any()
    assert 5e-6 < fit.rms_s < 20e-6
    t = np.linspace(tc[0], tc[-1], 101)
    assert np.abs(fit.utc_of_obt(obt_of(t)) - t).max() < 10e-6
    assert abs(fit.clock_rate - ins.OBT_RATE) < 1e-9


def test_time_correlation_needs_two_points():
    with pytest.raises(ValueError):
        TimeCorrelation.fit([1.0], [2.0])


def test_one_time_correlation_packet_gives_its_point_and_its_clock_rate():
    tc = np.array([T0 + 600.0])
    one = TimeCorrelation.from_packets({"obt": obt_of(tc), "utc": tc, "clock_rate": np.array([ins.OBT_RATE])})
    t = np.array([T0, T0 + 1800.0])
    assert np.abs(one.utc_of_obt(obt_of(t)) - t).max() < 1e-6
    assert one.clock_rate == pytest.approx(ins.OBT_RATE)


@pytest.mark.parametrize("utc, rate", [([], []), ([np.nan], [1.0]), ([T0], [np.nan])])
def test_no_usable_time_correlation_packet_is_its_own_error(utc, rate):
    obt = np.zeros(len(utc))
    with pytest.raises(NoTimeCorrelation):
        TimeCorrelation.from_packets({"obt": obt, "utc": np.array(utc), "clock_rate": np.array(rate)})


# --- quaternion helpers ----------------------------------------------------------------------------------
def test_qmul_and_z_rotation_match_matrices():
    from pipeline.simulate.scanlaw import quaternion_to_frame

    q = SCAN.quaternion(np.array([T0]))
    r = z_rotation(np.array([0.3]))
    m = np.stack(quaternion_to_frame(qmul(r, q)), axis=1)[0]  # rows x, y, z of R(r q)
    mq = np.stack(quaternion_to_frame(q), axis=1)[0]
    mr = np.stack(quaternion_to_frame(r), axis=1)[0]
    assert np.allclose(m, mr @ mq, atol=1e-14)


def test_slerp_endpoints_and_sign():
    q = SCAN.quaternion(np.array([T0, T0 + 4.0]))
    assert np.allclose(slerp(q[:1], q[1:], np.array([0.0])), q[:1])
    assert np.allclose(slerp(q[:1], q[1:], np.array([1.0])), q[1:])
    assert np.allclose(slerp(q[:1], -q[1:], np.array([0.5])), slerp(q[:1], q[1:], np.array([0.5])))


# --- attitude --------------------------------------------------------------------------------------------
def test_attitude_interpolation_accuracy():
    ta, obt, q = _samples(T0, T0 + 3600.0)
    t = np.random.default_rng(1).uniform(ta[0], ta[-1], 20000)
    err = _frame_error_mas(Attitude(obt, q), t)
    assert err.max() < 0.01  # measured 0.003 mas
    plain = _frame_error_mas(Attitude(obt, q, spin_rate=0.0), t)
    assert 0.02 < plain.max() < 0.2  # plain slerp: measured 0.09 mas
    # on the samples themselves: exact
    assert _frame_error_mas(Attitude(obt, q), ta).max() < 1e-3


def test_attitude_sparse_samples_within_max_gap():
    ta, obt, q = _samples(T0, T0 + 3600.0, 60.0)
    att = Attitude(obt, q)  # 60-s spacing is not a gap (> max_gap_s is)
    t = np.random.default_rng(2).uniform(ta[0], ta[-1], 5000)
    assert att.available(obt_of(t)).all()
    assert _frame_error_mas(att, t).max() < 0.3  # measured 0.08 mas


def test_attitude_unsorted_duplicated_sign_flipped():
    ta, obt, q = _samples(T0, T0 + 600.0)
    rng = np.random.default_rng(4)
    flip = rng.random(len(q)) < 0.5
    q2 = np.where(flip[:, None], -q, q)
    dup = rng.choice(len(q), 30, replace=False)
    obt2, q2 = np.r_[obt, obt[dup]], np.r_[q2, q2[dup]]
    perm = rng.permutation(len(obt2))
    messy = Attitude(obt2[perm], q2[perm])
    clean = Attitude(obt, q)
    assert messy.n_duplicates == 30 and len(messy) == len(clean)
    t = obt_of(rng.uniform(ta[0], ta[-1], 1000))
    assert np.allclose(messy.quaternion(t), clean.quaternion(t), atol=1e-15)
    assert (messy.quaternion(t)[:, 3] >= 0).all()


def test_attitude_gaps_give_nan_or_raise():
    ta, obt, q = _samples(T0, T0 + 1200.0)
    lost = (ta > T0 + 400.0) & (ta < T0 + 500.0)  # a 104-s hole (lost packets)
    short = (ta > T0 + 800.0) & (ta < T0 + 840.0)  # a 44-s hole: still interpolated
    keep = ~(lost | short)
    att = Attitude(obt[keep], q[keep])
    assert len(att.gaps()) == 1
    t = np.array([T0 + 300.0, T0 + 450.0, T0 + 820.0, T0 - 10.0, T0 + 1300.0, np.nan])
    ok = att.available(obt_of(t))
    assert ok.tolist() == [True, False, True, False, False, False]
    qi = att.quaternion(obt_of(t))
    assert np.isfinite(qi[ok]).all() and np.isnan(qi[~ok]).all()
    assert _frame_error_mas(att, t[:1]).max() < 0.01
    assert _frame_error_mas(att, t[2:3]).max() < 0.1  # across the 44-s hole
    x, _, _ = att.frame(obt_of(t))
    assert np.isnan(x[~ok]).all()
    with pytest.raises(AttitudeGapError):
        att.quaternion(obt_of(t), strict=True)
    att.quaternion(obt_of(t[ok]), strict=True)
    # a tighter limit turns the short hole into a gap too
    assert not Attitude(obt[keep], q[keep], max_gap_s=30.0).available(obt_of(T0 + 820.0))


def test_attitude_from_packets_concatenates_passes():
    ta, obt, q = _samples(T0, T0 + 400.0)
    parts = [{"obt": obt[:60], "quat": q[:60]}, {"obt": obt[50:], "quat": q[50:]}]  # overlapping passes
    att = Attitude.concatenate(parts)
    assert len(att) == len(ta) and att.n_duplicates == 10
    assert np.array_equal(Attitude.from_packets({"obt": obt, "quat": q}).obt, att.obt)
    assert len(Attitude.concatenate([])) == 0
    assert not Attitude.concatenate([]).available(obt[:3]).any()
