"""Transits: every crossing of a FoV centre line (eta = 0) by a source, found without time stepping.

Algorithm (docs/simulator.md, "Transits"): split [t0, t1) into blocks (1 h by default, well under a spin
period). Per block, the attitude at the block centre gives each source's across-scan angle (a cheap
matrix product over all sources, which discards everything not near the scan circle) and its azimuth,
from which the crossing time of each FoV is predicted assuming uniform spin. The predictions are refined
with the attitude at the predicted time (secant iteration, vectorised over all candidates) until
|eta| < 1e-7 deg; each crossing is kept by the one block that contains it.
"""

from __future__ import annotations

import numpy as np

from pipeline.instrument import FOV_AC_WIDTH_DEG, SPIN_RATE_RAD_S, row_of_zeta
from pipeline.simulate.scanlaw import (
    FOV_AZIMUTH_RAD,
    SPIN_AXIS_RATE_MAX_RAD_S,
    ScanLaw,
    field_angles_in_frame,
    wrap_pi,
)
from pipeline.simulate.sky import Sky, pixels_along

TRANSIT_DTYPE = np.dtype(
    [
        ("idx", "i8"),
        ("t", "f8"),
        ("fov", "u1"),
        ("zeta_deg", "f8"),
        ("row", "i1"),
        ("ac_pixel", "f8"),
        ("on_ccd", "?"),
    ]
)

BLOCK_S = 3600.0  # time block of the candidate search (must stay well below the spin period)
PREDICTION_MARGIN_S = 120.0  # bound of |predicted - true crossing time| (measured error < 0.1 s)
ETA_TOL_DEG = 1e-7
MAX_ITER = 30
TRACK_STEP_DEG = 0.5  # sampling of the FoV tracks when choosing sky pixels
PIXEL_MARGIN_DEG = 0.1
_CHUNK_ELEMENTS = 4_000_000  # blocks x sources per matrix product
_HALF_WIDTH = np.deg2rad(FOV_AC_WIDTH_DEG / 2.0)


def _empty() -> np.ndarray:
    return np.empty(0, TRANSIT_DTYPE)


def _eta_zeta(scanlaw: ScanLaw, u: np.ndarray, t: np.ndarray, fov: np.ndarray):
    """eta, zeta (rad) of sources u (m, 3) at times t (m,) in FoV fov (m,)."""
    x, y, z = scanlaw.frame(t)
    eta, zeta = field_angles_in_frame(u, x, y, z, fov)
    return np.deg2rad(eta), np.deg2rad(zeta)


def _candidates(scanlaw: ScanLaw, xyz: np.ndarray, edges: np.ndarray):
    """(source index, fov, block index, block-centre time, eta at centre, predicted crossing time)."""
    a, b = edges[:-1], edges[1:]
    tc = 0.5 * (a + b)
    half = 0.5 * (b - a).max()
    x, y, z = scanlaw.frame(tc)
    # |zeta| can change by at most |dz/dt| |t - tc| between the block centre and the crossing.
    zeta_max = _HALF_WIDTH + 1.5 * SPIN_AXIS_RATE_MAX_RAD_S * (half + PREDICTION_MARGIN_S) + 1e-6
    lim = np.sin(zeta_max)
    n = len(xyz)
    per_chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    out = []
    for c0 in range(0, len(tc), per_chunk):
        c1 = min(c0 + per_chunk, len(tc))
        d = z[c0:c1] @ xyz.T  # (blocks, sources)
        bi, si = np.nonzero(np.abs(d) < lim)
        if bi.size == 0:
            continue
        bi = bi + c0
        u = xyz[si]
        phi = np.arctan2(np.einsum("ij,ij->i", u, y[bi]), np.einsum("ij,ij->i", u, x[bi]))
        for fov in (0, 1):
            eta = wrap_pi(FOV_AZIMUTH_RAD[fov] - phi)
            tp = tc[bi] - eta / SPIN_RATE_RAD_S
            keep = (tp >= a[bi] - PREDICTION_MARGIN_S) & (tp < b[bi] + PREDICTION_MARGIN_S)
            k = np.nonzero(keep)[0]
            out.append((si[k], np.full(k.size, fov, np.uint8), bi[k], tc[bi[k]], eta[k], tp[k]))
    if not out:
        z0 = np.zeros(0)
        return np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.int64), z0, z0, z0
    return tuple(np.concatenate(col) for col in zip(*out, strict=True))


def find_transits(
    scanlaw: ScanLaw, xyz: np.ndarray, t0: float, t1: float, block_s: float = BLOCK_S
) -> np.ndarray:
    """Every crossing of eta = 0 by the sources xyz (n, 3) (ICRS unit vectors) in [t0, t1), both FoVs,
    with |zeta| < FOV_AC_WIDTH_DEG / 2. Returns a TRANSIT_DTYPE array sorted by t:
    idx (index into xyz), t (mission s), fov, zeta_deg, row, ac_pixel, on_ccd (instrument.row_of_zeta).
    """
    xyz = np.ascontiguousarray(np.atleast_2d(np.asarray(xyz, dtype=float)))
    if not (t1 > t0) or len(xyz) == 0:
        return _empty()
    if not 0 < block_s <= 7200.0:
        raise ValueError("block_s must be in (0, 7200] s")
    nb = int(np.ceil((t1 - t0) / block_s))
    edges = t0 + block_s * np.arange(nb + 1, dtype=float)
    edges[-1] = t1
    si, fov, bi, ta, ea, tb = _candidates(scanlaw, xyz, edges)
    if si.size == 0:
        return _empty()
    u = xyz[si]
    # Secant iteration on eta(t) = 0, starting from the block centre (ta, ea) and the prediction tb.
    t = tb.copy()
    eta, zeta = _eta_zeta(scanlaw, u, t, fov)
    slope = np.full(t.size, SPIN_RATE_RAD_S)
    dt = t - ta
    ok = np.abs(dt) > 1.0
    slope[ok] = (eta[ok] - ea[ok]) / dt[ok]
    tol = np.deg2rad(ETA_TOL_DEG)
    active = np.nonzero(np.abs(eta) >= tol)[0]
    for _ in range(MAX_ITER):
        if active.size == 0:
            break
        s = np.clip(slope[active], 0.5 * SPIN_RATE_RAD_S, 1.5 * SPIN_RATE_RAD_S)
        t_new = t[active] - eta[active] / s
        e_new, z_new = _eta_zeta(scanlaw, u[active], t_new, fov[active])
        step = t_new - t[active]
        good = np.abs(step) > 1e-9
        slope[active[good]] = (e_new[good] - eta[active[good]]) / step[good]
        t[active], eta[active], zeta[active] = t_new, e_new, z_new
        active = active[np.abs(e_new) >= tol]
    if active.size:
        raise RuntimeError(f"transit refinement did not converge for {active.size} candidates")
    a, b = edges[:-1][bi], edges[1:][bi]
    keep = (t >= a) & (t < b) & (np.abs(zeta) < _HALF_WIDTH)
    order = np.lexsort((fov[keep], si[keep], t[keep]))
    k = np.nonzero(keep)[0][order]
    out = np.empty(k.size, TRANSIT_DTYPE)
    out["idx"] = si[k]
    out["t"] = t[k]
    out["fov"] = fov[k]
    zeta_deg = np.rad2deg(zeta[k])
    out["zeta_deg"] = zeta_deg
    row, ac_pixel, on_ccd = row_of_zeta(zeta_deg)
    out["row"] = row
    out["ac_pixel"] = ac_pixel
    out["on_ccd"] = on_ccd
    return out


def swept_pixels(scanlaw: ScanLaw, t0: float, t1: float, step_deg: float = TRACK_STEP_DEG) -> np.ndarray:
    """Level-5 pixels that the two FoVs (|zeta| < FOV_AC_WIDTH_DEG / 2) sweep in [t0, t1]."""
    dt = np.deg2rad(step_deg) / SPIN_RATE_RAD_S
    n = max(2, int(np.ceil((t1 - t0) / dt)) + 1)
    times = np.linspace(t0, t1, n)
    dirs = scanlaw.fov_directions(times).reshape(-1, 3)
    radius = FOV_AC_WIDTH_DEG / 2.0 + step_deg / 2.0 + PIXEL_MARGIN_DEG
    return pixels_along(dirs, radius)


def transits_in_interval(
    sky: Sky, scanlaw: ScanLaw, t0: float, t1: float, compact: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Transits of the sky's sources in [t0, t1): (transits, sources), transits["idx"] indexing sources.

    Loads the level-5 pixels swept by both FoV tracks, then runs find_transits. With compact (default)
    only the sources that transit are returned (in sky order), otherwise all sources of the pixels.
    """
    sources = sky.sources(swept_pixels(scanlaw, t0, t1))
    xyz = np.stack([sources["x"], sources["y"], sources["z"]], axis=1)
    tr = find_transits(scanlaw, xyz, t0, t1)
    if compact:
        used, inverse = np.unique(tr["idx"], return_inverse=True)
        sources = sources[used]
        tr["idx"] = inverse
    return tr, sources
