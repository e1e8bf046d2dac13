"""Sky positions of transits: field angles of the nine AF windows + attitude -> ICRS direction.

Conventions (pipeline.simulate.scanlaw): the attitude quaternion rotates ICRS vectors into the scanning
frame (x, y, z); FoV f points at frame azimuth phi_f = +Gamma/2 (f = 0) or -Gamma/2 (f = 1); a direction u
has the field angles eta = phi_f - atan2(u.y, u.x) and zeta = asin(u.z). So the frame direction of the
field angles (eta, zeta) is

    u_frame = (cos zeta cos phi, cos zeta sin phi, sin zeta),   phi = phi_f - eta,

and u = u_frame.x * x + u_frame.y * y + u_frame.z * z in ICRS, with x, y, z the frame axes at the
observation time (pipeline.simulate.scanlaw.quaternion_to_frame).

Measurements of one transit: the observation time t_k of window k (k = 1..9), when the image crosses the
readout line of AF_k at eta_k = column_eta_deg(k); and one across-scan coordinate, the integer AC pixel
of the window on its row (zeta = zeta_of_row(row, ac_pixel)), taken to refer to the reference column AF5
(the eta = 0 line), as in the simulator. Eta_k at t_k puts the source on the frame meridian of azimuth
phi_f - eta_k at t_k, an exact great-circle constraint u . n_k = 0 with
n_k = -sin(phi_k) x(t_k) + cos(phi_k) y(t_k) whatever the across-scan angle; zeta gives
u . z(t_ac) = sin(zeta). The transit position solves these (at most) nine along-scan equations in the
least-squares sense for the AL offset and the one across-scan equation exactly for the AC offset (Gauss-
Newton in the tangent plane, three steps). The AL equations also carry a little AC information (the
meridians of the nine windows tilt by ~1e-5 rad as the spin axis moves), five orders of magnitude weaker
than the AC pixel; it is dropped so that AL timing errors cannot leak into AC. So the AL coordinate is the
mean over the windows (mas precision) and the AC one comes from the AC pixel alone, quantised
(176.8 mas / sqrt(12) = 51 mas rms). Using one AC value at one time avoids the across-scan motion of the
image during a transit (up to 2.5 arcsec between AF1 and AF9, from the motion of the spin axis), which
a plain mean of nine per-window directions would suffer from when windows are missing.

Details and measured accuracy: docs/positions_and_crossmatch.md.
"""

from __future__ import annotations

import numpy as np

from pipeline.instrument import (
    CCD_CROSSING_S,
    N_AF,
    PIXEL_AC_MAS,
    REFERENCE_COLUMN,
    column_eta_deg,
    zeta_of_row,
)
from pipeline.reduce.attitude import Attitude
from pipeline.simulate.scanlaw import FOV_AZIMUTH_RAD

RAD_TO_MAS = np.rad2deg(1.0) * 3.6e6
SIGMA_AC_QUANT_MAS = PIXEL_AC_MAS / np.sqrt(12.0)  # 51.0 mas: rms of a uniform +-0.5 pixel rounding
_AF_COLUMNS = np.arange(1, N_AF + 1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def xyz_to_radec(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (..., 3) -> ra in [0, 360), dec (deg)."""
    ra = np.mod(np.rad2deg(np.arctan2(u[..., 1], u[..., 0])), 360.0)
    dec = np.rad2deg(np.arcsin(np.clip(u[..., 2], -1.0, 1.0)))
    return ra, dec


def position_angle_deg(u: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Position angle (deg, east of north, [0, 360)) of the tangent direction d at unit vectors u."""
    north = np.stack([-u[..., 2] * u[..., 0], -u[..., 2] * u[..., 1], 1.0 - u[..., 2] ** 2], axis=-1)
    east = np.stack([-u[..., 1], u[..., 0], np.zeros_like(u[..., 0])], axis=-1)
    return np.mod(np.rad2deg(np.arctan2(_dot(d, east), _dot(d, north))), 360.0)


def field_to_icrs(x, y, z, fov, eta_deg, zeta_deg) -> np.ndarray:
    """Field angles (deg) in FoV fov of frames x, y, z (..., 3) -> ICRS unit vectors (..., 3).

    Inverse of pipeline.simulate.scanlaw.field_angles_in_frame; all arguments broadcast.
    """
    phi = FOV_AZIMUTH_RAD[np.asarray(fov, dtype=np.int64)] - np.deg2rad(eta_deg)
    zeta = np.deg2rad(zeta_deg)
    cz = np.cos(zeta)
    a, b, c = (cz * np.cos(phi))[..., None], (cz * np.sin(phi))[..., None], np.sin(zeta)[..., None]
    return a * x + b * y + c * z


def window_directions(attitude: Attitude, obt_obs, fov, zeta_deg) -> np.ndarray:
    """Per-window directions (n, 9, 3): (eta_k, zeta) at the attitude of each window's time (NaN if none).

    zeta is the one across-scan angle of the transit, so these carry the AC motion during the transit
    (see the module docstring); sky_positions does not average them.
    """
    t = np.asarray(obt_obs, dtype=float).reshape(-1, N_AF)
    x, y, z = (a.reshape(*t.shape, 3) for a in attitude.frame(t.ravel()))
    fov = np.asarray(fov, dtype=np.int64)[:, None]
    zeta = np.asarray(zeta_deg, dtype=float)[:, None]
    return field_to_icrs(x, y, z, fov, column_eta_deg(_AF_COLUMNS)[None, :], zeta)


def sky_positions(
    attitude: Attitude,
    obt_obs,
    fov,
    row,
    ac_pixel,
    *,
    window_weight=None,
    sigma_ac_mas: float = SIGMA_AC_QUANT_MAS,
    ac_column: int = REFERENCE_COLUMN,
) -> dict:
    """Transit positions from the observation times of the 9 AF windows and the AC pixel.

    attitude: Attitude (OBT -> quaternion); obt_obs (n, 9): OBT at which the image crosses the readout
    line of AF1..AF9 (window start + centroid x0 * TDI period), NaN for a missing window; fov, row,
    ac_pixel (n,): FoV (0/1), CCD row and AC pixel of the windows (zeta = zeta_of_row(row, ac_pixel)),
    the AC coordinate referring to the crossing of column ac_column (default AF5, eta = 0).
    window_weight (n, 9), optional: relative AL weights of the windows (e.g. 1 / centroid variance);
    equal weights by default.

    Returns a dict of arrays over the transits:
    - ra, dec (deg), xyz (n, 3): the least-squares direction (NaN where not valid);
    - valid: at least one window with attitude, and attitude at the AC reference time;
    - n_windows: windows used (finite time and attitude available);
    - obt_ref: OBT of the AC reference (the ac_column window's time, or where that is missing the mean
      of t_k - (k - ac_column) * CCD_CROSSING_S over the used windows): the epoch of the position;
    - scan_pa_deg: position angle (east of north) of the scan direction at the source, the direction in
      which the fields of view sweep the sky (z x u); eta increases the opposite way;
    - al_residual_mas (n, 9): per-window along-scan residual, eta_k minus the eta of the fitted position
      at t_k (NaN for unused windows);
    - al_scatter_mas: rms of the residuals with n_windows - 1 degrees of freedom (NaN if < 2 windows);
    - sigma_al_mas: al_scatter_mas / sqrt(n_windows), the AL error of the transit position;
    - sigma_ac_mas: the AC error, the quantisation of the AC pixel (51 mas) by default;
    - zeta_deg: the AC field angle used.
    """
    t = np.asarray(obt_obs, dtype=float).reshape(-1, N_AF)
    n = len(t)
    fov = np.asarray(fov, dtype=np.int64).reshape(n)
    zeta = zeta_of_row(np.asarray(row, dtype=float).reshape(n), np.asarray(ac_pixel, dtype=float).reshape(n))
    zeta = np.asarray(zeta, dtype=float)
    # along-scan constraints: the frame meridian of azimuth phi_k at t_k, normal n_k
    x, y, _ = (a.reshape(n, N_AF, 3) for a in attitude.frame(t.ravel()))
    use = np.isfinite(x).all(axis=2)  # time finite and attitude available
    phi = FOV_AZIMUTH_RAD[fov][:, None] - np.deg2rad(column_eta_deg(_AF_COLUMNS))[None, :]
    normal = -np.sin(phi)[..., None] * x + np.cos(phi)[..., None] * y
    normal[~use] = 0.0
    n_win = use.sum(axis=1)
    # across-scan constraint at the reference time
    kc = ac_column - 1
    shifted = np.where(use, t - (_AF_COLUMNS - ac_column)[None, :] * CCD_CROSSING_S, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_est = shifted.sum(axis=1) / n_win
    t_ref = np.where(use[:, kc], t[:, kc], t_est)
    xr, yr, zr = attitude.frame(t_ref)
    valid = (n_win > 0) & np.isfinite(zr).all(axis=1)
    xr[~valid], yr[~valid], zr[~valid] = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
    # start: eta = column eta of ac_column (the source's position at t_ref), the measured zeta
    u = field_to_icrs(xr, yr, zr, fov, column_eta_deg(ac_column), zeta)
    w = np.where(use, 1.0 if window_weight is None else np.asarray(window_weight, dtype=float), 0.0)
    sin_zeta = np.sin(np.deg2rad(zeta))
    for _ in range(3):
        # The AL equations fix the AL offset a, the AC equation the AC offset c; the weak AC information
        # in the AL equations (the meridians tilt by ~1e-5 rad over a transit as the spin axis moves) is
        # dropped, so that AL timing errors cannot leak into AC. u . z_r has no AL derivative at u.
        e_al = _unit(np.cross(zr, u))
        e_ac = np.cross(u, e_al)
        r = _dot(u[:, None, :], normal)  # (n, 9)
        ga = _dot(e_al[:, None, :], normal)
        swg = (w * ga * ga).sum(axis=1)
        da = -(w * ga * r).sum(axis=1) / np.where(valid & (swg > 0), swg, 1.0)
        dc = -(_dot(u, zr) - sin_zeta) / np.where(valid, _dot(e_ac, zr), 1.0)
        da, dc = np.where(valid, da, 0.0), np.where(valid, dc, 0.0)
        u = _unit(u + da[:, None] * e_al + dc[:, None] * e_ac)
    # residuals: u . n_k = cos(zeta) sin(eta_k - eta) -> AL offset of the window (rad)
    res = _dot(u[:, None, :], normal) / np.cos(np.deg2rad(zeta))[:, None]
    res_mas = np.where(use & valid[:, None], res * RAD_TO_MAS, np.nan)
    dof = np.maximum(n_win - 1, 1)
    scatter = np.sqrt((np.where(use, res_mas, 0.0) ** 2).sum(axis=1) / dof)
    scatter = np.where(valid & (n_win >= 2), scatter, np.nan)
    scan_dir = _unit(np.cross(zr, u))
    u = np.where(valid[:, None], u, np.nan)
    ra, dec = xyz_to_radec(u)
    return {
        "ra": ra,
        "dec": dec,
        "xyz": u,
        "valid": valid,
        "n_windows": n_win.astype(np.int64),
        "obt_ref": np.where(valid, t_ref, np.nan),
        "scan_pa_deg": np.where(valid, position_angle_deg(u, scan_dir), np.nan),
        "al_residual_mas": res_mas,
        "al_scatter_mas": scatter,
        "sigma_al_mas": scatter / np.sqrt(np.maximum(n_win, 1)),
        "sigma_ac_mas": np.where(valid, sigma_ac_mas, np.nan),
        "zeta_deg": zeta,
    }
