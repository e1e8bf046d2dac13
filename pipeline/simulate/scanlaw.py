"""Gaia's nominal scanning law in heliotropic form, as pure numpy functions of mission time.

The spin axis z keeps the solar aspect angle xi = 45 deg from the Sun direction s and precesses around it
with phase nu(t) (uniform rate, 5.8 loops per year); the spacecraft spins about z with the linear phase
Omega(t) = omega0 + omega (t - t_ref), measured from a reference n perpendicular to z that is carried
along with the precession so that the inertial spin rate is exactly omega. Everything is built in
ecliptic coordinates (J2000 mean ecliptic) and rotated to ICRS with the J2000 obliquity. Equations and
approximations (uniform precession rate, commanded attitude only): docs/simulator.md, "Scanning law".

Frame (scanning reference system): x, y, z unit vectors in ICRS. The frame rotates positively about z at
SPIN_RATE_RAD_S. FoV 0 (preceding) points at azimuth +Gamma/2 in the xy plane, FoV 1 (following) at
-Gamma/2, Gamma the basic angle; a fixed source's azimuth phi = atan2(u.y, u.x) decreases with time, so it
crosses FoV 0 first and FoV 1 Gamma/omega (106.5 min) later. Along-scan field angle of FoV f:
eta = phi_f - phi (wrapped to (-180, 180] deg), which grows through a transit; zeta = asin(u.z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.instrument import (
    BASIC_ANGLE_DEG,
    PRECESSION_LOOPS_PER_YEAR,
    SOLAR_ASPECT_ANGLE_DEG,
    SPIN_RATE_RAD_S,
)
from pipeline.mission_time import DAY_S, from_utc, julian_date

OBLIQUITY_J2000_DEG = 23.4392911
JULIAN_YEAR_S = 365.25 * DAY_S
PRECESSION_RATE_RAD_S = 2.0 * np.pi * PRECESSION_LOOPS_PER_YEAR / JULIAN_YEAR_S  # period 62.97 d
# Start of Gaia's nominal scanning law (after the ecliptic-pole scanning law of commissioning).
NSL_START = float(from_utc("2014-08-22T00:00:00"))

_XI = np.deg2rad(SOLAR_ASPECT_ANGLE_DEG)
_COS_XI, _SIN_XI = np.cos(_XI), np.sin(_XI)
_EPS = np.deg2rad(OBLIQUITY_J2000_DEG)
_COS_EPS, _SIN_EPS = np.cos(_EPS), np.sin(_EPS)
_HALF_GAMMA = np.deg2rad(BASIC_ANGLE_DEG) / 2.0
FOV_AZIMUTH_RAD = np.array([_HALF_GAMMA, -_HALF_GAMMA])  # frame azimuth of FoV 0 (+Gamma/2) and FoV 1

SUN_MEAN_RATE_RAD_S = np.deg2rad(0.9856474) / DAY_S
# Upper bound of |dz/dt| (rad/s): Sun motion (at perihelion, 1.02 deg/day) and precession.
SUN_RATE_MAX_RAD_S = np.deg2rad(1.02) / DAY_S
SPIN_AXIS_RATE_MAX_RAD_S = _COS_XI * SUN_RATE_MAX_RAD_S + _SIN_XI * (
    PRECESSION_RATE_RAD_S + SUN_RATE_MAX_RAD_S
)


def sun_longitude(t) -> np.ndarray:
    """Ecliptic longitude of the Sun (rad, in [0, 2 pi)) at mission time t (s).

    Low-precision formula of the Astronomical Almanac (accuracy 0.01 deg over 1950-2050):
    n = JD - 2451545.0, L = 280.460 + 0.9856474 n, g = 357.528 + 0.9856003 n (deg),
    lambda = L + 1.915 sin g + 0.020 sin 2g. Gaia is at L2, so the geocentric direction is used.
    """
    n = julian_date(t) - 2451545.0
    L = 280.460 + 0.9856474 * n
    g = np.deg2rad(357.528 + 0.9856003 * n)
    lam = L + 1.915 * np.sin(g) + 0.020 * np.sin(2.0 * g)
    return np.mod(np.deg2rad(lam), 2.0 * np.pi)


def ecliptic_to_icrs(v: np.ndarray) -> np.ndarray:
    """Rotate (..., 3) vectors from ecliptic (J2000 mean) to ICRS (equatorial) coordinates."""
    v = np.asarray(v, dtype=float)
    out = np.empty_like(v)
    out[..., 0] = v[..., 0]
    out[..., 1] = _COS_EPS * v[..., 1] - _SIN_EPS * v[..., 2]
    out[..., 2] = _SIN_EPS * v[..., 1] + _COS_EPS * v[..., 2]
    return out


def sun_direction(t) -> np.ndarray:
    """Unit vector (n, 3) towards the Sun in ICRS."""
    lam = np.atleast_1d(sun_longitude(t))
    s = np.stack([np.cos(lam), np.sin(lam), np.zeros_like(lam)], axis=-1)
    return ecliptic_to_icrs(s)


def _rows_to_quaternion(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Rotation matrices with rows x, y, z -> quaternions (n, 4) x, y, z, w with w >= 0 (Shepperd)."""
    m00, m01, m02 = x[:, 0], x[:, 1], x[:, 2]
    m10, m11, m12 = y[:, 0], y[:, 1], y[:, 2]
    m20, m21, m22 = z[:, 0], z[:, 1], z[:, 2]
    tr = m00 + m11 + m22
    q = np.empty((len(x), 4))
    # Choose, per row, the largest of 4w^2, 4x^2, 4y^2, 4z^2 for numerical stability.
    cand = np.stack([1 + 2 * m00 - tr, 1 + 2 * m11 - tr, 1 + 2 * m22 - tr, 1 + tr], axis=1)
    k = np.argmax(cand, axis=1)
    c = np.sqrt(np.maximum(cand[np.arange(len(x)), k], 1e-300))  # = 2 |q_k|
    # k = 3 (w largest)
    s = k == 3
    q[s, 3] = c[s] / 2
    q[s, 0] = (m21[s] - m12[s]) / (2 * c[s])
    q[s, 1] = (m02[s] - m20[s]) / (2 * c[s])
    q[s, 2] = (m10[s] - m01[s]) / (2 * c[s])
    s = k == 0
    q[s, 0] = c[s] / 2
    q[s, 3] = (m21[s] - m12[s]) / (2 * c[s])
    q[s, 1] = (m01[s] + m10[s]) / (2 * c[s])
    q[s, 2] = (m02[s] + m20[s]) / (2 * c[s])
    s = k == 1
    q[s, 1] = c[s] / 2
    q[s, 3] = (m02[s] - m20[s]) / (2 * c[s])
    q[s, 0] = (m01[s] + m10[s]) / (2 * c[s])
    q[s, 2] = (m12[s] + m21[s]) / (2 * c[s])
    s = k == 2
    q[s, 2] = c[s] / 2
    q[s, 3] = (m10[s] - m01[s]) / (2 * c[s])
    q[s, 0] = (m02[s] + m20[s]) / (2 * c[s])
    q[s, 1] = (m12[s] + m21[s]) / (2 * c[s])
    q *= np.where(q[:, 3:4] < 0, -1.0, 1.0)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def quaternion_to_frame(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attitude quaternions (n, 4) x, y, z, w -> frame axes x, y, z (each (n, 3), ICRS).

    Inverse of ScanLaw.quaternion: the rotation matrix R(q) (frame components = R(q) u) has rows x, y, z.
    """
    q = np.atleast_2d(np.asarray(q, dtype=float))
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    a, b, c, w = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    x = np.stack([1 - 2 * (b * b + c * c), 2 * (a * b - c * w), 2 * (a * c + b * w)], axis=1)
    y = np.stack([2 * (a * b + c * w), 1 - 2 * (a * a + c * c), 2 * (b * c - a * w)], axis=1)
    z = np.stack([2 * (a * c - b * w), 2 * (b * c + a * w), 1 - 2 * (a * a + b * b)], axis=1)
    return x, y, z


@dataclass(frozen=True)
class ScanLaw:
    """Nominal scanning law: nu(t) = nu0 + 2 pi 5.8 (t - t_ref) / yr, Omega(t) = omega0 + omega (t - t_ref).

    t_ref: reference epoch (mission seconds; default the start of Gaia's nominal scanning, 2014-08-22);
    nu0, omega0: precession and spin phases (rad) at t_ref.
    """

    t_ref: float = NSL_START
    nu0: float = 0.0
    omega0: float = 0.0

    # --- phases --------------------------------------------------------------------------------------
    def precession_phase(self, t) -> np.ndarray:
        """nu(t) in [0, 2 pi): angle of z around s, 0 when z lies between s and the north ecliptic pole."""
        dt = np.asarray(t, dtype=float) - self.t_ref
        return np.mod(self.nu0 + PRECESSION_RATE_RAD_S * dt, 2.0 * np.pi)

    def spin_phase(self, t) -> np.ndarray:
        """Omega(t) = omega0 + omega (t - t_ref) in [0, 2 pi): angle of x from the reference n about z."""
        dt = np.asarray(t, dtype=float) - self.t_ref
        return np.mod(self.omega0 + np.mod(SPIN_RATE_RAD_S * dt, 2.0 * np.pi), 2.0 * np.pi)

    def transport_angle(self, t) -> np.ndarray:
        """c(t): angle of the spin reference n from the heliotropic direction p about z (rad).

        The triad (p, z x p, z) turns about z at w_z = -nu' cos xi + lambda' sin xi cos nu (nu', lambda' the
        precession and solar rates); n turns by c' = -w_z relative to it, so that the inertial spin rate about
        z is exactly omega while Omega(t) stays linear. lambda' is taken at its mean value (the residual,
        from the orbital eccentricity, is below 2e-5 of omega).
        """
        dt = np.asarray(t, dtype=float) - self.t_ref
        nu = self.nu0 + PRECESSION_RATE_RAD_S * dt
        return np.mod(
            _COS_XI * PRECESSION_RATE_RAD_S * dt
            - _SIN_XI * SUN_MEAN_RATE_RAD_S / PRECESSION_RATE_RAD_S * (np.sin(nu) - np.sin(self.nu0)),
            2.0 * np.pi,
        )

    # --- attitude ------------------------------------------------------------------------------------
    def frame(self, t) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scanning frame axes x, y, z at times t: each (n, 3) ICRS unit vectors, x cross y = z."""
        t = np.atleast_1d(np.asarray(t, dtype=float))
        lam = sun_longitude(t)
        cl, sl = np.cos(lam), np.sin(lam)
        nu = self.precession_phase(t)
        cn, sn = np.cos(nu), np.sin(nu)
        # Ecliptic: s = (cl, sl, 0), k = (0, 0, 1), k x s = (-sl, cl, 0);
        # z = cos xi s + sin xi (cos nu k + sin nu k x s).
        zx = _COS_XI * cl - _SIN_XI * sn * sl
        zy = _COS_XI * sl + _SIN_XI * sn * cl
        zz = _SIN_XI * cn
        # Heliotropic reference p = (dz/dnu) / |dz/dnu| = -sin nu k + cos nu (k x s), q = z x p.
        px, py, pz = -cn * sl, cn * cl, -sn
        qx, qy, qz = zy * pz - zz * py, zz * px - zx * pz, zx * py - zy * px
        # x = cos O n + sin O (z x n) with n = cos c p + sin c q, i.e. x at angle psi = O + c from p.
        psi = self.spin_phase(t) + self.transport_angle(t)
        co, so = np.cos(psi), np.sin(psi)
        x = np.stack([co * px + so * qx, co * py + so * qy, co * pz + so * qz], axis=-1)
        y = np.stack([co * qx - so * px, co * qy - so * py, co * qz - so * pz], axis=-1)
        z = np.stack([zx, zy, zz], axis=-1)
        return ecliptic_to_icrs(x), ecliptic_to_icrs(y), ecliptic_to_icrs(z)

    def fov_directions(self, t) -> np.ndarray:
        """Directions of the FoV centres (eta = zeta = 0): (n, 2, 3) ICRS, [:, 0] FoV 0, [:, 1] FoV 1."""
        x, y, _ = self.frame(t)
        c, s = np.cos(_HALF_GAMMA), np.sin(_HALF_GAMMA)
        return np.stack([c * x + s * y, c * x - s * y], axis=1)

    def quaternion(self, t) -> np.ndarray:
        """Attitude quaternions (n, 4) x, y, z, w (scalar last, w >= 0).

        q rotates ICRS vectors into the scanning frame: q u q* = (u.x, u.y, u.z) (same as
        scipy.spatial.transform.Rotation.from_quat(q).apply(u)).
        """
        x, y, z = self.frame(t)
        return _rows_to_quaternion(x, y, z)

    def field_angles(self, u, t, fov) -> tuple[np.ndarray, np.ndarray]:
        """Field angles (deg) of sources u (n, 3) at times t (n,) in FoV fov (n,): (eta, zeta).

        zeta = asin(u.z); eta = phi_fov - phi with phi = atan2(u.y, u.x), wrapped to (-180, 180]:
        eta grows at about omega through a transit and is 0 on the FoV centre line.
        """
        u = np.atleast_2d(np.asarray(u, dtype=float))
        x, y, z = self.frame(t)
        return field_angles_in_frame(u, x, y, z, np.broadcast_to(np.asarray(fov), (len(u),)))


def field_angles_in_frame(u, x, y, z, fov) -> tuple[np.ndarray, np.ndarray]:
    """Field angles (deg) of u (n, 3) in FoV fov (n,) of the frames x, y, z (each (n, 3))."""
    ux = np.einsum("ij,ij->i", u, x)
    uy = np.einsum("ij,ij->i", u, y)
    uz = np.einsum("ij,ij->i", u, z)
    phi = np.arctan2(uy, ux)
    eta = wrap_pi(FOV_AZIMUTH_RAD[np.asarray(fov, dtype=np.int64)] - phi)
    zeta = np.arcsin(np.clip(uz, -1.0, 1.0))
    return np.rad2deg(eta), np.rad2deg(zeta)


def wrap_pi(a: np.ndarray) -> np.ndarray:
    """Angle (rad) to (-pi, pi]."""
    return np.pi - np.mod(np.pi - a, 2.0 * np.pi)
