"""The nominal scanning law: geometry, rates and attitude representation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.instrument import BASIC_ANGLE_DEG, SOLAR_ASPECT_ANGLE_DEG, SPIN_PERIOD_S, SPIN_RATE_RAD_S
from pipeline.mission_time import DAY_S, from_utc
from pipeline.simulate.scanlaw import (
    SPIN_AXIS_RATE_MAX_RAD_S,
    ScanLaw,
    ecliptic_to_icrs,
    quaternion_to_frame,
    sun_direction,
    sun_longitude,
)

LAW = ScanLaw(nu0=0.7, omega0=2.1)
RNG = np.random.default_rng(42)
TIMES = LAW.t_ref + RNG.uniform(-200, 5 * 365.25, 500) * DAY_S


def test_frames_are_orthonormal_and_right_handed():
    x, y, z = LAW.frame(TIMES)
    for v in (x, y, z):
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
    for a, b in ((x, y), (y, z), (z, x)):
        np.testing.assert_allclose(np.einsum("ij,ij->i", a, b), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.cross(x, y), z, atol=1e-12)


def test_spin_axis_keeps_the_solar_aspect_angle():
    _, _, z = LAW.frame(TIMES)
    s = sun_direction(TIMES)
    angle = np.rad2deg(np.arccos(np.einsum("ij,ij->i", z, s)))
    np.testing.assert_allclose(angle, SOLAR_ASPECT_ANGLE_DEG, atol=1e-9)


def test_inertial_spin_rate_is_nominal_and_positive_about_z():
    t = TIMES[:100]
    h = 1.0
    x0, _, _ = LAW.frame(t - h)
    x1, _, _ = LAW.frame(t + h)
    _, y, _ = LAW.frame(t)
    rate = np.einsum("ij,ij->i", (x1 - x0) / (2 * h), y)  # dx/dt . y = spin rate about +z
    np.testing.assert_allclose(rate / SPIN_RATE_RAD_S, 1.0, atol=5e-5)


def test_spin_period():
    t = TIMES[:50]
    # after one nominal spin period the frame is back up to the (slow) spin-axis motion (< 1.5 deg) ...
    x0, _, _ = LAW.frame(t)
    xp, _, _ = LAW.frame(t + SPIN_PERIOD_S)
    assert np.all(np.rad2deg(np.arccos(np.einsum("ij,ij->i", x0, xp))) < 1.5)
    # ... while half a period later x points the other way
    xh, _, _ = LAW.frame(t + SPIN_PERIOD_S / 2)
    assert np.all(np.einsum("ij,ij->i", x0, xh) < -0.99)
    dphase = np.mod(LAW.spin_phase(t + SPIN_PERIOD_S) - LAW.spin_phase(t), 2 * np.pi)
    assert np.all(np.minimum(dphase, 2 * np.pi - dphase) < 1e-6)


def test_fov_separation_is_the_basic_angle():
    f = LAW.fov_directions(TIMES)
    angle = np.rad2deg(np.arccos(np.einsum("ij,ij->i", f[:, 0], f[:, 1])))
    np.testing.assert_allclose(angle, BASIC_ANGLE_DEG, atol=1e-9)
    _, _, z = LAW.frame(TIMES)
    np.testing.assert_allclose(np.einsum("ij,ij->i", f[:, 0], z), 0.0, atol=1e-12)


def test_precession_period_is_about_63_days():
    """nu measured from the geometry (angle of z about the Sun, from the ecliptic pole) advances 2 pi
    in 365.25 / 5.8 = 62.97 days."""
    law = ScanLaw()
    t = law.t_ref + np.arange(0, 190, 0.25) * DAY_S
    _, _, z = law.frame(t)
    s = sun_direction(t)
    k = ecliptic_to_icrs(np.array([0.0, 0.0, 1.0]))
    ks = np.cross(k, s)
    nu = np.unwrap(np.arctan2(np.einsum("ij,ij->i", z, ks), z @ k))
    slope = np.polyfit(t, nu, 1)[0]
    period_days = 2 * np.pi / slope / DAY_S
    assert period_days == pytest.approx(63.0, abs=0.5)
    np.testing.assert_allclose(np.mod(nu - law.precession_phase(t) + np.pi, 2 * np.pi) - np.pi, 0, atol=1e-9)


def test_sun_longitude_at_known_dates():
    # Meeus, Astronomical Algorithms (2nd ed.), Example 25.a: apparent longitude of the Sun on
    # 1992 October 13.0 TD = 199.90895 deg (TD - UT = 59 s, i.e. 0.0007 deg, is negligible here).
    lam = np.rad2deg(sun_longitude(from_utc("1992-10-13T00:00:00")))
    assert lam == pytest.approx(199.90895, abs=0.02)
    # March equinox 2015-03-20 22:45 UTC (US Naval Observatory, Earth's seasons): apparent longitude 0.
    lam = np.rad2deg(sun_longitude(from_utc("2015-03-20T22:45:00")))
    assert min(lam, 360 - lam) < 0.02


def test_quaternion_round_trip_and_convention():
    q = LAW.quaternion(TIMES)
    assert q.shape == (len(TIMES), 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    assert np.all(q[:, 3] >= 0)
    x, y, z = LAW.frame(TIMES)
    xq, yq, zq = quaternion_to_frame(q)
    np.testing.assert_allclose(xq, x, atol=1e-12)
    np.testing.assert_allclose(yq, y, atol=1e-12)
    np.testing.assert_allclose(zq, z, atol=1e-12)
    # q rotates ICRS vectors into the frame: frame components (u.x, u.y, u.z), scalar-last convention
    u = RNG.normal(size=(len(TIMES), 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    expected = np.stack([np.einsum("ij,ij->i", u, a) for a in (x, y, z)], axis=1)
    np.testing.assert_allclose(Rotation.from_quat(q).apply(u), expected, atol=1e-12)


def test_field_angles_follow_the_conventions():
    t = TIMES[:20]
    f = LAW.fov_directions(t)
    # a source at the FoV 0 centre at t: eta = zeta = 0 there; eta grows at omega (images move to +eta)
    eta, zeta = LAW.field_angles(f[:, 0], t, np.zeros(len(t), int))
    np.testing.assert_allclose(eta, 0.0, atol=1e-9)
    np.testing.assert_allclose(zeta, 0.0, atol=1e-9)
    eta_later, _ = LAW.field_angles(f[:, 0], t + 10.0, np.zeros(len(t), int))
    np.testing.assert_allclose(eta_later / 10.0, np.rad2deg(SPIN_RATE_RAD_S), rtol=1e-3)
    # the following FoV sees the same source Gamma / omega (106.5 min) later, close to its centre
    dt = np.deg2rad(BASIC_ANGLE_DEG) / SPIN_RATE_RAD_S
    assert dt / 60 == pytest.approx(106.5, abs=0.1)
    eta1, zeta1 = LAW.field_angles(f[:, 0], t + dt, np.ones(len(t), int))
    assert np.all(np.abs(eta1) < 0.01)
    assert np.all(np.abs(zeta1) < np.rad2deg(SPIN_AXIS_RATE_MAX_RAD_S * dt))  # z moved by < 0.41 deg
    # source 90 deg from the scan circle: zeta = 90 deg
    _, _, z = LAW.frame(t)
    _, zeta_pole = LAW.field_angles(z, t, np.zeros(len(t), int))
    np.testing.assert_allclose(zeta_pole, 90.0, atol=1e-6)
