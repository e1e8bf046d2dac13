"""Image parameters: flux, along-scan centroid and background of every AF window, and their transit means.

Pure numpy functions, vectorised over all windows of all transits (no Python loop per window or transit).
The model and the noise are those of the simulator (pipeline.simulate.windows) and docs/image_parameters.md:

    d_j = (ADU_j - bias) * GAIN                           sample j in e-, j < n_samples
    E[d_j] = mu_j = F_g L_j(x0, sigma) + b                L_j from pipeline.lsf (pixel-integrated Gaussian)
    Var[d_j] = V_j = mu_j + R,  R = READ_NOISE_E**2 + GAIN**2 / 12    (Poisson + read noise + ADC step)

with F_g = F 2^-gate the flux recorded in the window (F: e- per CCD crossing, ungated) and b the background
per sample as recorded in the window (after gating). The estimator maximises the shifted-Poisson
likelihood, in which d_j + R ~ Poisson(mu_j + R): its score is sum_j (d_j - mu_j) / V_j dmu_j/dtheta and
its Fisher matrix I = sum_j dmu_j/dtheta dmu_j/dtheta^T / V_j, which is also the Cramer-Rao bound of the
model above. Fitting is Fisher scoring from a moment start, with step limits and a convergence test.

Window flags (bit field, `flags` of fit_windows):
    FLAG_SATURATED          1   a sample at ADC_MAX (excluded from the fit)
    FLAG_FAILED             2   fit unusable: set together with one of the reasons below
    FLAG_UNUSED             4   window not present (all its samples 0, as the decoder returns absent data)
    FLAG_NOT_CONVERGED      8   no convergence within MAX_ITER iterations
    FLAG_NONPOSITIVE_FLUX  16   fitted flux <= 0
    FLAG_CENTROID_OUTSIDE  32   fitted x0 outside [0, n_samples]
    FLAG_FEW_SAMPLES       64   fewer than MIN_VALID_SAMPLES usable samples
Transit flags (combine_transit, image_parameters) are the OR of the window flags plus
    FLAG_ONBOARD_SATURATED 128  the star packet's on-board saturation flag (image_parameters only)
    FLAG_NO_GOOD_WINDOWS   256  no window usable for the transit flux
Saturated windows enter the transit flux only when a transit has no usable unsaturated window.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
from scipy.special import ndtr

from pipeline import instrument as ins
from pipeline.lsf import lsf_fractions

# --- constants ----------------------------------------------------------------------------------------------
MAX_SAMPLES = ins.WINDOW_SAMPLES_BRIGHT
ALLOWED_N_SAMPLES = (ins.WINDOW_SAMPLES_FAINT, ins.WINDOW_SAMPLES_BRIGHT)
READOUT_VARIANCE_E2 = ins.READ_NOISE_E**2 + ins.GAIN_E_PER_ADU**2 / 12.0  # read noise + ADC quantisation
MIN_VALID_SAMPLES = 5  # 3 parameters plus at least 2 degrees of freedom
MAX_ITER = 20
CONVERGENCE_TOL = 1e-3  # converged when every step is below this fraction of the parameter's error
MAX_X0_STEP = 0.5  # samples per iteration
MAX_SIGMA_STEP = 0.25  # fraction of sigma per iteration (LSF-width fit)
LSF_MIN_FLUX_E = 2.0e4  # windows used by estimate_lsf_width: recorded (gated) flux at least this

FLAG_SATURATED = 1
FLAG_FAILED = 2
FLAG_UNUSED = 4
FLAG_NOT_CONVERGED = 8
FLAG_NONPOSITIVE_FLUX = 16
FLAG_CENTROID_OUTSIDE = 32
FLAG_FEW_SAMPLES = 64
FLAG_ONBOARD_SATURATED = 128
FLAG_NO_GOOD_WINDOWS = 256
BAD_WINDOW = FLAG_FAILED | FLAG_UNUSED  # windows never used for the transit flux

_LN10_2P5 = 2.5 / np.log(10.0)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


# --- input checks -------------------------------------------------------------------------------------------
def _as_int(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(value)
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    if a.size and (not np.all(np.isfinite(a)) or not np.all(a == np.round(a))):
        raise ValueError(f"{name} must hold integers")
    return a.astype(np.int64)


def _check_inputs(samples_adu, n_samples, bias_adu, gate, lsf_sigma):
    s = np.asarray(samples_adu)
    if s.ndim != 3 or s.shape[1:] != (ins.N_AF, MAX_SAMPLES):
        raise ValueError(f"samples_adu has shape {s.shape}, expected (n, {ins.N_AF}, {MAX_SAMPLES})")
    if not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
        raise ValueError(f"samples_adu must be numeric, got dtype {s.dtype}")
    n = s.shape[0]
    ns = _as_int("n_samples", n_samples, (n,))
    bad = ~np.isin(ns, ALLOWED_N_SAMPLES)
    if bad.any():
        raise ValueError(f"n_samples must be 12 or 18, got {np.unique(ns[bad]).tolist()}")
    g = _as_int("gate", gate, (n,))
    if ((g < 0) | (g > ins.MAX_GATE)).any():
        raise ValueError(f"gate must lie in 0..{ins.MAX_GATE}")
    b = np.asarray(bias_adu, dtype=float)
    if b.shape != (n, ins.N_AF):
        raise ValueError(f"bias_adu has shape {b.shape}, expected {(n, ins.N_AF)}")
    sig = np.asarray(lsf_sigma, dtype=float)
    if sig.ndim and sig.shape != (n, ins.N_AF):
        raise ValueError(f"lsf_sigma has shape {sig.shape}, expected a float or {(n, ins.N_AF)}")
    if sig.size and not np.all(np.isfinite(sig) & (sig > 0)):
        raise ValueError("lsf_sigma must be finite and positive")
    sig = np.broadcast_to(sig, (n, ins.N_AF)).astype(float)
    return s.astype(float), ns, b, g, sig


# --- model pieces -------------------------------------------------------------------------------------------
def _design(theta: np.ndarray, sigma: np.ndarray | None, width: int = MAX_SAMPLES) -> tuple[np.ndarray, list]:
    """Model mean mu (m, width) and the Jacobian columns dmu/dtheta_p for theta = (F_g, x0, b[, sigma]).

    The background column is the constant 1 and is returned as None (the sums below use that). One pass
    over u = (edge - x0)/sigma: L = lsf_fractions, dL/dx0 = -[phi(u)]_j^{j+1}/sigma (lsf_derivative_x0),
    dL/dsigma = -[u phi(u)]_j^{j+1}/sigma.
    """
    free_sigma = sigma is None
    f, x0, b = theta[:, 0], theta[:, 1], theta[:, 2]
    s = theta[:, 3] if sigma is None else sigma
    u = (np.arange(width + 1, dtype=float) - x0[:, None]) / s[:, None]
    cdf = ndtr(u)
    lsf = cdf[:, 1:] - cdf[:, :-1]
    g = np.exp(-0.5 * u * u)
    c = (f * _INV_SQRT_2PI / s)[:, None]
    cols = [lsf, c * (g[:, :-1] - g[:, 1:]), None]
    if free_sigma:
        ug = u * g
        cols.append(c * (ug[:, :-1] - ug[:, 1:]))
    return f[:, None] * lsf + b[:, None], cols


def _variance(mu: np.ndarray) -> np.ndarray:
    return np.maximum(mu + READOUT_VARIANCE_E2, 0.2 * READOUT_VARIANCE_E2)


def _wsum(w: np.ndarray, a: np.ndarray | None, b: np.ndarray | None = None) -> np.ndarray:
    """sum_j w_j a_j b_j over the rows, a column None standing for the constant 1."""
    if a is None:
        a, b = b, None
    if a is None:
        return w.sum(axis=1)
    return np.einsum("mj,mj->m", w, a) if b is None else np.einsum("mj,mj,mj->m", w, a, b)


def _fisher(cols: list, w: np.ndarray) -> np.ndarray:
    """Fisher matrices sum_j w_j J_jp J_jq -> (m, P, P)."""
    p = len(cols)
    h = np.empty((len(w), p, p))
    for i in range(p):
        for k in range(i, p):
            h[:, i, k] = h[:, k, i] = _wsum(w, cols[i], cols[k])
    return h


def _normalised(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-diagonal version of Fisher matrices (with a tiny ridge: never singular) and the scale."""
    dg = np.sqrt(np.einsum("mpp->mp", h))
    dg = np.where(np.isfinite(dg) & (dg > 0), dg, 1.0)
    hn = h / (dg[:, :, None] * dg[:, None, :])
    hn = np.where(np.isfinite(hn), hn, 0.0) + 1e-9 * np.eye(h.shape[-1])
    return hn, dg


def _inv_sym(a: np.ndarray) -> np.ndarray:
    """Inverse of symmetric positive-definite matrices (m, P, P): closed form (cofactors) for P = 3."""
    if a.shape[-1] != 3:
        return np.linalg.inv(a)
    c00, c01, c02, c11, c12, c22, det = _cofactors3(
        a[:, 0, 0], a[:, 0, 1], a[:, 0, 2], a[:, 1, 1], a[:, 1, 2], a[:, 2, 2]
    )
    inv = np.stack([c00, c01, c02, c01, c11, c12, c02, c12, c22], axis=1).reshape(-1, 3, 3)
    return inv / det[:, None, None]


def _cofactors3(a00, a01, a02, a11, a12, a22):
    """Cofactors (c00, c01, c02, c11, c12, c22) and determinant of symmetric 3x3 matrices, element-wise."""
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    return c00, c01, c02, c11, c12, c22, a00 * c00 + a01 * c01 + a02 * c02


def _covariance(h: np.ndarray) -> np.ndarray:
    hn, dg = _normalised(h)
    return _inv_sym(hn) / (dg[:, :, None] * dg[:, None, :])


def _scoring(d, valid, theta, sigma, max_iter=MAX_ITER, tol=CONVERGENCE_TOL):
    """Fisher scoring of the shifted-Poisson likelihood, in place on theta (m, P); only unconverged windows
    are iterated. sigma (m,) fixed LSF width, or None to fit it as theta[:, 3].

    Returns (converged (m,) bool, iterations used (m,) int).
    """
    m, width = d.shape
    converged = np.zeros(m, bool)
    n_iter = np.zeros(m, np.int64)
    active = np.arange(m)
    for _ in range(max_iter):
        if active.size == 0:
            break
        th = theta[active]
        mu, cols = _design(th, None if sigma is None else sigma[active], width)
        w = valid[active] / _variance(mu)
        r = d[active] - mu
        grad = np.stack([_wsum(w, c, r) for c in cols], axis=1)
        hn, dg = _normalised(_fisher(cols, w))
        cov_n = _inv_sym(hn)
        step = np.einsum("mpq,mq->mp", cov_n, grad / dg)
        err_n = np.sqrt(np.einsum("mpp->mp", cov_n))  # errors in normalised units
        small = np.all(np.abs(step) <= tol * err_n, axis=1)
        step = step / dg
        # step limits: the flux may fall by 70% per step (further only when it is within 3 sigma of zero, so
        # that a window without a star can go non-positive and be flagged), the centroid moves by at most
        # MAX_X0_STEP, the background keeps V_j positive
        f = th[:, 0]
        f_floor = np.maximum(0.7 * np.abs(f), 3.0 * err_n[:, 0] / dg[:, 0])
        step[:, 0] = np.clip(step[:, 0], -f_floor, 3.0 * np.abs(f) + 100.0)
        step[:, 1] = np.clip(step[:, 1], -MAX_X0_STEP, MAX_X0_STEP)
        th = th + step
        th[:, 1] = np.clip(th[:, 1], -2.0, width + 2.0)
        th[:, 2] = np.maximum(th[:, 2], -0.8 * READOUT_VARIANCE_E2)
        if sigma is None:
            s_old = theta[active, 3]
            th[:, 3] = np.clip(th[:, 3], (1 - MAX_SIGMA_STEP) * s_old, (1 + MAX_SIGMA_STEP) * s_old)
            th[:, 3] = np.maximum(th[:, 3], 0.2)
        theta[active] = th
        n_iter[active] += 1
        converged[active[small]] = True
        active = active[~small]
    return converged, n_iter


def _prepare(samples, ns, bias, sigma, rows=None):
    """Flatten to windows: data (e-), masks, start values. Returns a dict over the N = n*9 windows, or over
    the windows ROWS (indices into them) only."""
    n = samples.shape[0]
    adu = samples.reshape(n * ins.N_AF, MAX_SAMPLES)
    nsw = np.repeat(ns, ins.N_AF)
    bias_w = bias.reshape(-1)
    sigma = sigma.reshape(-1)
    if rows is not None:
        adu, nsw, bias_w, sigma = adu[rows], nsw[rows], bias_w[rows], sigma[rows]
    in_window = np.arange(MAX_SAMPLES) < nsw[:, None]
    present = (in_window & (adu != 0)).any(axis=1)
    saturated = present & (in_window & (adu >= ins.ADC_MAX)).any(axis=1)
    valid = in_window & (adu > 0) & (adu < ins.ADC_MAX) & np.isfinite(bias_w)[:, None] & present[:, None]
    d = np.where(in_window & np.isfinite(bias_w)[:, None], (adu - bias_w[:, None]) * ins.GAIN_E_PER_ADU, 0.0)
    return {
        "d": d,
        "in_window": in_window,
        "valid": valid,
        "n_valid": valid.sum(axis=1),
        "present": present,
        "saturated": saturated,
        "ns": nsw,
        "sigma": sigma,
    }


def _nanmedian4(v: np.ndarray) -> np.ndarray:
    """np.nanmedian of the rows of v (m, 4), 0 where a row is all NaN (a sort of 4 values, not np.nanmedian's
    masked-array path)."""
    s = np.sort(v, axis=1)  # NaN last
    k = (~np.isnan(v)).sum(axis=1)
    lo = np.take_along_axis(s, np.maximum((k - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(s, np.minimum(k // 2, 3)[:, None], axis=1)[:, 0]
    return np.where(k > 0, (lo + hi) / 2, 0.0)


def _moments_start(d, in_window, valid, ns, sigma, with_slope=False):
    """Robust start (F_g, x0, b): edge median, peak-box centroid, then the linear flux for that centroid.
    with_slope: also return (L, E) = _lsf_slope at the start (the first scoring iteration evaluates there)."""
    m, width = d.shape
    rows = np.arange(m)[:, None]
    edge_idx = np.stack([np.zeros(m, np.int64), np.ones(m, np.int64), ns - 2, ns - 1], axis=1)
    b0 = _nanmedian4(np.where(valid[rows, edge_idx], d[rows, edge_idx], np.nan))
    # centroid: saturated samples keep their clipped (large) values, which locate the image well enough
    dp = np.where(in_window, d - b0[:, None], 0.0)
    box = dp[:, :-2] + dp[:, 1:-1] + dp[:, 2:]
    box = np.where(np.arange(width - 2) < (ns - 2)[:, None], box, -np.inf)
    c = box.argmax(axis=1) + 1
    j = np.arange(width)
    band = in_window & (np.abs(j - c[:, None]) <= 2)
    wgt = np.where(band, np.maximum(dp, 0.0), 0.0)
    sw = wgt.sum(axis=1)
    x0 = np.where(sw > 0, (wgt * (j + 0.5)).sum(axis=1) / np.where(sw > 0, sw, 1.0), ns / 2.0)
    lsf_slope = _lsf_slope(x0, sigma, width) if with_slope else None
    lsf = (lsf_fractions(x0, sigma, width) if lsf_slope is None else lsf_slope[0]) * valid
    den = (lsf * lsf).sum(axis=1)
    f0 = np.where(den > 0, (lsf * (d - b0[:, None]) * valid).sum(axis=1) / np.where(den > 0, den, 1.0), 0.0)
    floor = np.sqrt(np.maximum(valid.sum(axis=1), 1) * (np.maximum(b0, 0.0) + READOUT_VARIANCE_E2))
    theta = np.stack([np.maximum(f0, floor), x0, b0], axis=1)
    return (theta, lsf_slope) if with_slope else theta


# --- the 3-parameter fit, streamlined -----------------------------------------------------------------------
# fit_windows, cramer_rao and combine_transit work with the Fisher matrix of theta = (F_g, x0, b) as its six
# distinct entries, each an (m,) array, rather than (m, 3, 3) arrays: the same sums and the same normalised
# closed-form inverse as _fisher/_covariance, without the strided 3 x 3 bookkeeping. The fit runs over blocks
# of BLOCK_WINDOWS windows so that its (block, samples) arrays stay in the CPU cache between the operations.
BLOCK_WINDOWS = 4096


def _lsf_slope(x0: np.ndarray, sigma: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(L, E), (m, width): L = lsf_fractions(x0, sigma, width) and E = exp(-u_j^2/2) - exp(-u_{j+1}^2/2),
    u = (edge - x0)/sigma, so that dL/dx0 = E / (sqrt(2 pi) sigma) (lsf_derivative_x0); one pass over u."""
    u = (np.arange(width + 1, dtype=float) - x0[:, None]) / sigma[:, None]
    cdf = ndtr(u)
    lsf = cdf[:, 1:] - cdf[:, :-1]
    np.square(u, out=u)
    u *= -0.5
    np.exp(u, out=u)
    return lsf, u[:, :-1] - u[:, 1:]


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("mj,mj->m", a, b)


def _rowsum(a: np.ndarray) -> np.ndarray:
    return np.einsum("mj->m", a)


def _info3(w: np.ndarray, lsf: np.ndarray, slope: np.ndarray, k: np.ndarray) -> list[np.ndarray]:
    """Fisher entries [h00, h01, h02, h11, h12, h22] of (F_g, x0, b), weights w (m, n): dmu/dF_g = L,
    dmu/dx0 = k E, dmu/db = 1."""
    wl, we = w * lsf, w * slope
    h00, h01, h02 = _rowdot(wl, lsf), k * _rowdot(wl, slope), _rowsum(wl)
    return [h00, h01, h02, k * k * _rowdot(we, slope), k * _rowsum(we), _rowsum(w)]


def _inv3_normalised(h: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """_normalised then _inv_sym of the entries [h00, h01, h02, h11, h12, h22]: returns the entries of the
    inverse of the unit-diagonal matrix (same order) and the scales dg (the covariance is inv / (dg dg))."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        dg = []
        for hii in (h[0], h[3], h[5]):
            s = np.sqrt(hii)
            dg.append(np.where(np.isfinite(s) & (s > 0), s, 1.0))
        a = [h[0] / (dg[0] * dg[0]), h[1] / (dg[0] * dg[1]), h[2] / (dg[0] * dg[2]),
             h[3] / (dg[1] * dg[1]), h[4] / (dg[1] * dg[2]), h[5] / (dg[2] * dg[2])]  # fmt: skip
        a00, a01, a02, a11, a12, a22 = (np.where(np.isfinite(x), x, 0.0) for x in a)
        a00, a11, a22 = a00 + 1e-9, a11 + 1e-9, a22 + 1e-9
        c00, c01, c02, c11, c12, c22, det = _cofactors3(a00, a01, a02, a11, a12, a22)
        return [c00 / det, c01 / det, c02 / det, c11 / det, c12 / det, c22 / det], dg


def _errors3(h: list[np.ndarray]) -> np.ndarray:
    """sqrt(diag I^-1) -> (m, 3), as np.sqrt(np.einsum("mpp->mp", _covariance(h)))."""
    inv, dg = _inv3_normalised(h)
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.stack([inv[0] / (dg[0] * dg[0]), inv[3] / (dg[1] * dg[1]),
                                 inv[5] / (dg[2] * dg[2])], axis=1))  # fmt: skip


def _fit_block(d, valid, in_window, ns, sigma, max_iter=MAX_ITER, tol=CONVERGENCE_TOL):
    """Fit windows of one width (d, valid, in_window (m, width); ns, sigma (m,)): moment start, Fisher
    scoring of the shifted-Poisson likelihood (the steps, limits and convergence test of _scoring), then the
    errors and chi2 at the solution.

    Returns theta (m, 3), converged, n_iter, err (m, 3), chi2 and (L, E) at the solution (for the CRB)."""
    m, width = d.shape
    theta, lsf_slope = _moments_start(d, in_window, valid, ns, sigma, with_slope=True)
    vf = valid.astype(float)
    converged = np.zeros(m, bool)
    n_iter = np.zeros(m, np.int64)
    act = np.arange(m)
    th, da, va, sa = theta.copy(), d, vf, sigma  # the unconverged windows, compacted as they converge
    for _ in range(max_iter):
        if act.size == 0:
            break
        f, x0, b = th[:, 0], th[:, 1], th[:, 2]
        lsf, slope = _lsf_slope(x0, sa, width) if lsf_slope is None else lsf_slope  # first: at the start
        lsf_slope = None
        k = f * _INV_SQRT_2PI / sa  # dmu/dx0 = k E
        mu = f[:, None] * lsf + b[:, None]
        w = va / _variance(mu)
        wr = w * (da - mu)
        h = _info3(w, lsf, slope, k)
        inv, dg = _inv3_normalised(h)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            g0, g1, g2 = _rowdot(wr, lsf) / dg[0], k * _rowdot(wr, slope) / dg[1], _rowsum(wr) / dg[2]
            s0 = inv[0] * g0 + inv[1] * g1 + inv[2] * g2
            s1 = inv[1] * g0 + inv[3] * g1 + inv[4] * g2
            s2 = inv[2] * g0 + inv[4] * g1 + inv[5] * g2
            e0, e1, e2 = np.sqrt(inv[0]), np.sqrt(inv[3]), np.sqrt(inv[5])  # errors in normalised units
            small = (np.abs(s0) <= tol * e0) & (np.abs(s1) <= tol * e1) & (np.abs(s2) <= tol * e2)
            s0, s1, s2 = s0 / dg[0], s1 / dg[1], s2 / dg[2]
            # step limits: as _scoring (the flux falls by at most 70% unless within 3 sigma of zero, the
            # centroid moves by at most MAX_X0_STEP, the background keeps V_j positive)
            f_floor = np.maximum(0.7 * np.abs(f), 3.0 * e0 / dg[0])
            s0 = np.clip(s0, -f_floor, 3.0 * np.abs(f) + 100.0)
            s1 = np.clip(s1, -MAX_X0_STEP, MAX_X0_STEP)
        th = np.stack([f + s0, np.clip(x0 + s1, -2.0, width + 2.0),
                       np.maximum(b + s2, -0.8 * READOUT_VARIANCE_E2)], axis=1)  # fmt: skip
        theta[act] = th
        n_iter[act] += 1
        if small.any():
            converged[act[small]] = True
            keep = ~small
            act, th, da, va, sa = act[keep], th[keep], da[keep], va[keep], sa[keep]
    f, x0, b = theta[:, 0], theta[:, 1], theta[:, 2]
    lsf, slope = _lsf_slope(x0, sigma, width)
    mu = f[:, None] * lsf + b[:, None]
    w = vf / _variance(mu)
    err = _errors3(_info3(w, lsf, slope, f * _INV_SQRT_2PI / sigma))
    dof = np.maximum(vf.sum(axis=1) - 3, 1)
    chi2 = _rowdot(w, (d - mu) ** 2) / dof
    return theta, converged, n_iter, err, chi2, (lsf, slope)


# --- public API ---------------------------------------------------------------------------------------------
def fit_windows(samples_adu, n_samples, bias_adu, gate, lsf_sigma=ins.NOMINAL_LSF_SIGMA_PX) -> dict:
    """Maximum-likelihood flux, centroid and background of every AF window.

    samples_adu (n, 9, 18) ADU (zero beyond n_samples); n_samples (n,) 12 or 18; bias_adu (n, 9) ADU, the
    bias of each window's CCD at its time; gate (n,) 0..MAX_GATE; lsf_sigma float or (n, 9) AL pixels.

    Returns a dict of (n, 9) arrays: flux (e- per CCD crossing, ungated: x 2^gate), flux_err, x0 (samples,
    pipeline.lsf convention), x0_err, background (e- per sample as recorded in the window, i.e. after the
    gate), background_err, chi2 (reduced), flags (FLAG_* bits), n_valid (samples used), n_iter; and the
    inputs combine_transit needs: gate (n,), n_samples (n,), lsf_sigma (n, 9). Values are NaN for unused
    windows and windows with too few samples; other failed fits keep their last values.
    """
    return _fit_windows(samples_adu, n_samples, bias_adu, gate, lsf_sigma)[0]


def _fit_windows(samples_adu, n_samples, bias_adu, gate, lsf_sigma) -> tuple[dict, dict]:
    """fit_windows, and {width: (window indices, L, E)}: the LSF and its slope at each fitted window's
    solution (_lsf_slope), which the transit weights of combine_transit reuse."""
    samples, ns, bias, g, sigma = _check_inputs(samples_adu, n_samples, bias_adu, gate, lsf_sigma)
    n = samples.shape[0]
    p = _prepare(samples, ns, bias, sigma)
    nw = n * ins.N_AF
    enough = p["n_valid"] >= MIN_VALID_SAMPLES
    todo = np.flatnonzero(p["present"] & enough)

    theta = np.full((nw, 3), np.nan)
    err = np.full((nw, 3), np.nan)
    chi2 = np.full(nw, np.nan)
    converged = np.zeros(nw, bool)
    n_iter = np.zeros(nw, np.int64)
    lsf_at_fit = {}
    for width in (ins.WINDOW_SAMPLES_FAINT, ins.WINDOW_SAMPLES_BRIGHT):  # each length at its own width
        sel = todo[p["ns"][todo] == width]
        if not sel.size:
            continue
        lsf = np.empty((sel.size, width))
        slope = np.empty((sel.size, width))
        for a in range(0, sel.size, BLOCK_WINDOWS):
            blk = sel[a : a + BLOCK_WINDOWS]
            part = slice(a, a + blk.size)
            th, conv, it, e, c2, (lsf[part], slope[part]) = _fit_block(
                p["d"][blk, :width], p["valid"][blk, :width], p["in_window"][blk, :width], p["ns"][blk],
                p["sigma"][blk],
            )  # fmt: skip
            theta[blk], converged[blk], n_iter[blk], err[blk], chi2[blk] = th, conv, it, e, c2
        lsf_at_fit[width] = (sel, lsf, slope)

    flags = np.zeros(nw, np.int64)
    flags |= np.where(p["saturated"], FLAG_SATURATED, 0)
    flags |= np.where(~p["present"], FLAG_UNUSED, 0)
    fitted = np.zeros(nw, bool)
    fitted[todo] = True
    x0 = theta[:, 1]
    with np.errstate(invalid="ignore"):
        reasons = (
            np.where(p["present"] & ~enough, FLAG_FEW_SAMPLES, 0)
            | np.where(fitted & ~converged, FLAG_NOT_CONVERGED, 0)
            | np.where(fitted & ~(theta[:, 0] > 0), FLAG_NONPOSITIVE_FLUX, 0)
            | np.where(fitted & ~((x0 >= 0) & (x0 <= p["ns"])), FLAG_CENTROID_OUTSIDE, 0)
        )
    flags |= reasons | np.where(reasons != 0, FLAG_FAILED, 0)

    scale = np.repeat(2.0 ** g.astype(float), ins.N_AF)
    shape = (n, ins.N_AF)
    fit = {
        "flux": (theta[:, 0] * scale).reshape(shape),
        "flux_err": (err[:, 0] * scale).reshape(shape),
        "x0": x0.reshape(shape),
        "x0_err": err[:, 1].reshape(shape),
        "background": theta[:, 2].reshape(shape),
        "background_err": err[:, 2].reshape(shape),
        "chi2": chi2.reshape(shape),
        "flags": flags.reshape(shape),
        "n_valid": p["n_valid"].reshape(shape),
        "n_iter": n_iter.reshape(shape),
        "gate": g,
        "n_samples": ns,
        "lsf_sigma": sigma,
    }
    return fit, lsf_at_fit


def cramer_rao(flux, x0, background, lsf_sigma, n_samples, gate) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cramer-Rao bounds (sigma_flux, sigma_x0, sigma_b) of one window for the documented noise model.

    Inputs broadcast together: flux in e- per CCD crossing (ungated, as fit_windows returns it), x0 in
    samples, background in e- per sample as recorded (after the gate), lsf_sigma in AL pixels, n_samples
    12 or 18, gate. Fisher matrix I = sum_{j < n_samples} dmu_j dmu_j^T / (mu_j + R) over
    theta = (F_g, x0, b), mu_j = F_g L_j + b, F_g = flux 2^-gate, R = READ_NOISE_E^2 + GAIN^2/12; the bounds
    are the square roots of the diagonal of I^-1, with sigma_flux scaled back by 2^gate.
    """
    arrs = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (flux, x0, background, lsf_sigma)))
    ns, g = np.broadcast_arrays(np.asarray(n_samples), np.asarray(gate))
    shape = np.broadcast_shapes(arrs[0].shape, ns.shape)
    f, x, b, s = (np.broadcast_to(a, shape).reshape(-1) for a in arrs)
    ns = np.broadcast_to(ns, shape).reshape(-1).astype(float)
    scale = 2.0 ** np.broadcast_to(g, shape).reshape(-1).astype(float)
    ok = np.isfinite(f + x + b + s + ns + scale) & (s > 0)
    fg, x, b, s = (np.where(ok, f / scale, 1.0), np.where(ok, x, 0.0), np.where(ok, b, 0.0),
                   np.where(ok, s, 1.0))  # fmt: skip
    lsf, slope = _lsf_slope(x, s, MAX_SAMPLES)
    w = (np.arange(MAX_SAMPLES) < ns[:, None]) / _variance(fg[:, None] * lsf + b[:, None])
    err = _errors3(_info3(w, lsf, slope, fg * _INV_SQRT_2PI / s))
    err[~ok] = np.nan
    return (
        (err[:, 0] * scale).reshape(shape),
        err[:, 1].reshape(shape),
        err[:, 2].reshape(shape),
    )


def estimate_lsf_width(
    samples_adu,
    n_samples,
    bias_adu,
    gate,
    sigma_start: float = ins.NOMINAL_LSF_SIGMA_PX,
    min_flux_e: float = LSF_MIN_FLUX_E,
    fit: dict | None = None,
) -> dict:
    """LSF width from bright unsaturated windows: a 4-parameter ML fit (F_g, x0, b, sigma) per window.

    Windows qualify when the 3-parameter fit at sigma_start (`fit`, computed if not given) has no flag and
    a recorded (gated) flux of at least min_flux_e (default LSF_MIN_FLUX_E, about G < 16.5 ungated). The
    4-parameter Fisher scoring starts from that fit. Returns: sigma, sigma_err (n, 9; NaN where not used),
    used (n, 9) bool, n_used, median (the median sigma over the used windows, the monitoring statistic) and
    median_err (1.2533 x 1.4826 MAD / sqrt(n_used)); NaN when no window qualifies.
    """
    samples, ns, bias, g, _ = _check_inputs(samples_adu, n_samples, bias_adu, gate, sigma_start)
    if fit is None:
        fit = fit_windows(samples, ns, bias, g, sigma_start)
    n = samples.shape[0]
    f_rec = fit["flux"] * 2.0 ** (-g[:, None].astype(float))
    with np.errstate(invalid="ignore"):
        cand = np.flatnonzero(((fit["flags"] == 0) & (f_rec >= min_flux_e)).reshape(-1))
    sigma = np.full(n * ins.N_AF, np.nan)
    sigma_err = np.full(n * ins.N_AF, np.nan)
    used = np.zeros(n * ins.N_AF, bool)
    if cand.size:
        p = _prepare(samples, ns, bias, np.broadcast_to(float(sigma_start), (n, ins.N_AF)), rows=cand)
        d, valid = p["d"], p["valid"].astype(float)
        th = np.stack(
            [
                f_rec.reshape(-1)[cand],
                fit["x0"].reshape(-1)[cand],
                fit["background"].reshape(-1)[cand],
                np.full(cand.size, float(sigma_start)),
            ],
            axis=1,
        )
        conv, _ = _scoring(d, valid, th, None)
        mu, cols = _design(th, None)
        err = np.sqrt(np.einsum("mpp->mp", _covariance(_fisher(cols, valid / _variance(mu)))))
        good = conv & (th[:, 0] > 0) & (th[:, 3] > 0.25) & (th[:, 3] < 5.0) & np.isfinite(err[:, 3])
        sigma[cand[good]] = th[good, 3]
        sigma_err[cand[good]] = err[good, 3]
        used[cand[good]] = True
    k = int(used.sum())
    if k:
        vals = sigma[used]
        med = float(np.median(vals))
        med_err = float(1.2533 * 1.4826 * np.median(np.abs(vals - med)) / np.sqrt(k))
    else:
        med, med_err = np.nan, np.nan
    shape = (n, ins.N_AF)
    return {
        "sigma": sigma.reshape(shape),
        "sigma_err": sigma_err.reshape(shape),
        "used": used.reshape(shape),
        "n_used": k,
        "median": med,
        "median_err": med_err,
    }


def combine_transit(fit: dict, obt_af1=None, al_offset=None) -> dict:
    """Per-transit G flux and magnitude from the good AF windows, and the OBT of every window's centroid.

    Good windows have none of BAD_WINDOW (failed, unused) and are unsaturated; a transit whose usable
    windows are all saturated (beyond the last gate) uses those, fitted on their unsaturated samples, and
    keeps FLAG_SATURATED in its flags. The transit flux is the good windows' inverse-
    variance weighted mean, the weights being the Cramer-Rao flux variances evaluated at the transit's
    median window flux and median background (weights from each window's own flux would correlate with its
    error and bias the mean low). Returns (n,) arrays: flux_e_s, flux_e_s_err (e-/s, flux per CCD crossing
    / CCD_CROSSING_S), g_mag, g_mag_err (ZERO_POINT_G), n_good, flux_chi2 (reduced chi^2 of the good
    windows about the mean; NaN below 2 windows), flags (OR of the window flags, plus FLAG_NO_GOOD_WINDOWS).
    With obt_af1 (n,) (OBT of AF1 sample 0) and optionally al_offset (n, 9) (TDI periods, default 0) also:
    obt_window (n, 9) = obt_af1 + (k-1) CCD_CROSSING_S + (al_offset + x0) TDI_PERIOD_S, and obt_mean (n,),
    the mean over the good windows.
    """
    return _combine_transit(fit, obt_af1, al_offset)


def _combine_transit(fit: dict, obt_af1=None, al_offset=None, lsf_at_fit: dict | None = None) -> dict:
    """combine_transit; lsf_at_fit: the LSF at the fitted windows (_fit_windows) for the weights."""
    flux = np.asarray(fit["flux"], dtype=float)
    flags = np.asarray(fit["flags"], dtype=np.int64)
    n = flux.shape[0]
    usable = (flags & BAD_WINDOW) == 0
    unsaturated = usable & ((flags & FLAG_SATURATED) == 0)
    good = np.where(unsaturated.any(axis=1)[:, None], unsaturated, usable)
    n_good = good.sum(axis=1)
    any_good = n_good > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: transits without good windows
        f_med = np.nanmedian(np.where(good, flux, np.nan), axis=1)
        b_med = np.nanmedian(np.where(good, fit["background"], np.nan), axis=1)
    f_med, b_med = np.where(any_good, f_med, 1.0), np.where(any_good, b_med, 0.0)
    if lsf_at_fit is None:
        sig_f, _, _ = cramer_rao(
            f_med[:, None],
            np.where(good, fit["x0"], 0.0),
            b_med[:, None],
            fit["lsf_sigma"],
            np.asarray(fit["n_samples"])[:, None],
            np.asarray(fit["gate"])[:, None],
        )
    else:
        sig_f = _flux_crb_at_fit(fit, good, f_med, b_med, lsf_at_fit)
    w = np.where(good & np.isfinite(sig_f) & (sig_f > 0), 1.0 / np.where(sig_f > 0, sig_f, 1.0) ** 2, 0.0)
    sw = w.sum(axis=1)
    ok = sw > 0
    mean = np.where(ok, (w * np.where(good, flux, 0.0)).sum(axis=1) / np.where(ok, sw, 1.0), np.nan)
    err = np.where(ok, 1.0 / np.sqrt(np.where(ok, sw, 1.0)), np.nan)
    resid = np.where(good, flux - mean[:, None], 0.0)
    chi2 = np.where(n_good >= 2, (w * resid**2).sum(axis=1) / np.maximum(n_good - 1, 1), np.nan)
    flux_e_s = mean / ins.CCD_CROSSING_S
    tflags = np.bitwise_or.reduce(flags, axis=1) | np.where(ok, 0, FLAG_NO_GOOD_WINDOWS)
    with np.errstate(invalid="ignore", divide="ignore"):
        g_err = np.where(mean > 0, _LN10_2P5 * err / mean, np.nan)
    out = {
        "flux_e_s": flux_e_s,
        "flux_e_s_err": err / ins.CCD_CROSSING_S,
        "g_mag": ins.g_of_flux_e_s(flux_e_s),
        "g_mag_err": g_err,
        "n_good": n_good,
        "flux_chi2": chi2,
        "flags": tflags.astype(np.int64),
    }
    if obt_af1 is not None:
        obt_af1 = np.asarray(obt_af1, dtype=float)
        if obt_af1.shape != (n,):
            raise ValueError(f"obt_af1 has shape {obt_af1.shape}, expected {(n,)}")
        off = np.zeros((n, ins.N_AF)) if al_offset is None else np.asarray(al_offset, dtype=float)
        if off.shape != (n, ins.N_AF):
            raise ValueError(f"al_offset has shape {off.shape}, expected {(n, ins.N_AF)}")
        k = np.arange(1, ins.N_AF + 1)
        t = obt_af1[:, None] + (k - 1) * ins.CCD_CROSSING_S + (off + fit["x0"]) * ins.TDI_PERIOD_S
        cnt = np.maximum(n_good, 1)
        out["obt_window"] = t
        out["obt_mean"] = np.where(any_good, np.where(good, t, 0.0).sum(axis=1) / cnt, np.nan)
    return out


def _flux_crb_at_fit(fit: dict, good: np.ndarray, f_med: np.ndarray, b_med: np.ndarray, lsf_at_fit: dict):
    """The flux CRB of cramer_rao(f_med, x0, b_med, lsf_sigma, n_samples, gate) at the good windows (NaN
    elsewhere), from the LSF and its slope the fit left at each window's x0 (the same L and E as
    cramer_rao computes there: the same x0, sigma and edges)."""
    n = good.shape[0]
    good = good.reshape(-1)
    scale = np.repeat(2.0 ** np.asarray(fit["gate"]).astype(float), ins.N_AF)
    fg = np.repeat(f_med, ins.N_AF) / scale
    b = np.repeat(b_med, ins.N_AF)
    sigma = np.asarray(fit["lsf_sigma"], dtype=float).reshape(-1)
    sig_f = np.full(n * ins.N_AF, np.nan)
    done = np.zeros(n * ins.N_AF, bool)
    for sel, lsf, slope in lsf_at_fit.values():  # every fitted window (most are good), then keep the good
        w = 1.0 / _variance(fg[sel, None] * lsf + b[sel, None])
        crb = _errors3(_info3(w, lsf, slope, fg[sel] * _INV_SQRT_2PI / sigma[sel]))[:, 0] * scale[sel]
        idx = sel[good[sel]]
        sig_f[idx] = crb[good[sel]]
        done[idx] = True
    rest = np.flatnonzero(good & ~done)  # none when lsf_at_fit comes from the same fit
    if rest.size:
        x0 = np.asarray(fit["x0"], dtype=float).reshape(-1)[rest]
        ns = np.repeat(np.asarray(fit["n_samples"]), ins.N_AF)[rest]
        gate = np.repeat(np.asarray(fit["gate"]), ins.N_AF)[rest]
        sig_f[rest] = cramer_rao(fg[rest] * scale[rest], x0, b[rest], sigma[rest], ns, gate)[0]
    return sig_f.reshape(n, ins.N_AF)


def image_parameters(star: Mapping[str, np.ndarray], bias_adu, lsf_sigma=ins.NOMINAL_LSF_SIGMA_PX) -> dict:
    """Window and transit image parameters of decoded star packets (decode_pass(data).star).

    bias_adu (n, 9): each window's CCD bias (ADU), e.g. from window_bias(); lsf_sigma: float or (n, 9).
    Returns {"windows": fit_windows(...), "transits": combine_transit(...)} (arrays aligned with the star
    packets); the transit flags also carry FLAG_ONBOARD_SATURATED from the packet flags (bit 0).
    """
    fit, lsf_at_fit = _fit_windows(star["samples"], star["n_samples"], bias_adu, star["gate"], lsf_sigma)
    tr = _combine_transit(fit, star["obt"], star.get("al_offset"), lsf_at_fit)
    if "flags" in star:
        onboard = (np.asarray(star["flags"]).astype(np.int64) & 1) != 0
        tr["flags"] = tr["flags"] | np.where(onboard, FLAG_ONBOARD_SATURATED, 0)
    return {"windows": fit, "transits": tr}


def window_bias(hk_obt, hk_bias, star: Mapping[str, np.ndarray]) -> np.ndarray:
    """Bias (n, 9) ADU of each window's CCD from HK_BIAS packets (obt (m,), bias (m, 7, 10)).

    Takes the latest housekeeping sample at or before each window's start (the earliest one for windows
    before it): bias changes are steps, which a linear interpolation would smear over the 30 s cadence.
    """
    hk_obt = np.asarray(hk_obt, dtype=float)
    hk_bias = np.asarray(hk_bias, dtype=float)
    if hk_obt.ndim != 1 or hk_bias.shape != (len(hk_obt), ins.N_ROWS, ins.N_CCD_COLUMNS) or not len(hk_obt):
        raise ValueError("hk_obt (m,) and hk_bias (m, 7, 10) with m >= 1 expected")
    order = np.argsort(hk_obt, kind="stable")
    hk_obt, hk_bias = hk_obt[order], hk_bias[order]
    obt = np.asarray(star["obt"], dtype=float)
    n = len(obt)
    off = np.asarray(star.get("al_offset", np.zeros((n, ins.N_AF))), dtype=float)
    k = np.arange(1, ins.N_AF + 1)
    start = obt[:, None] + (k - 1) * ins.CCD_CROSSING_S + off * ins.TDI_PERIOD_S
    idx = np.clip(np.searchsorted(hk_obt, start, side="right") - 1, 0, len(hk_obt) - 1)
    row = np.asarray(star["row"], dtype=np.int64)[:, None]
    return hk_bias[idx, row, k[None, :]]
