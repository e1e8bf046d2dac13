"""What the focal plane records for each field-of-view transit: detection, window placement, samples.

Per transit (vectorised over all transits of a time block):
1. the sky mapper estimates the flux (3% error); sources fainter than DETECTION_LIMIT_G are not detected;
   the estimate sets the downlink class, the window length (18 or 12 AL samples) and the TDI gate;
2. the on-board propagation predicts the AF1 crossing (error 0.15 TDI periods rms) and centres the AF1
   window on it, on the TDI clock; AF2..AF9 windows follow at CCD_CROSSING_S intervals;
3. each of the 9 windows records per AL sample j: counts ~ Poisson(F * L_j(x0, sigma) + b) plus
   Normal(0, READ_NOISE_E), then ADU = counts / GAIN + bias(row, CCD), rounded and clipped to the ADC range.
   F is the flux collected in one CCD crossing reduced by the gate (2^-gate), L_j the line-spread
   function of pipeline.lsf, x0 the true image position in the window (sample units), b the sky
   background plus dark signal, also reduced by the gate.
"""

from __future__ import annotations

import numpy as np

from pipeline import instrument as ins
from pipeline.lsf import lsf_fractions
from pipeline.mission_time import obt_of
from pipeline.simulate.payload import Payload

SM_FLUX_ERROR = 0.03
PROPAGATION_ERROR_TDI = 0.15
MAX_SAMPLES = ins.WINDOW_SAMPLES_BRIGHT
_PEAK_FRACTION = float(lsf_fractions(np.array([0.5]), ins.NOMINAL_LSF_SIGMA_PX, 1)[0, 0])


def photon_sigma_mag(g: np.ndarray) -> np.ndarray:
    """Approximate photon-plus-read-noise error (mag) of a transit's G from its 9 windows.

    The fit of flux, centroid and background inflates the pure counting error by about 1.2.
    """
    f = ins.flux_e_per_ccd(g)
    n = ins.window_samples(g)
    var = ins.N_AF * (f + n * (ins.SKY_BACKGROUND_E + ins.READ_NOISE_E**2))
    return 1.0857 * 1.2 * np.sqrt(var) / (ins.N_AF * f)


def observe(
    rng: np.random.Generator, payload: Payload, t: np.ndarray, row: np.ndarray, flux_e_s: np.ndarray
) -> dict:
    """Detection, window placement and samples for transits crossing the FoV reference at mission time t.

    Returns a dict of arrays over the transits: detected, g_sm, mag_class, n_samples, gate, saturated,
    sm_flux, obt_af1 (OBT of sample 0 of the AF1 window), x0 (n, 9) true image positions in the windows,
    flux_ccd (e- per CCD after gating), background (e- per sample, (n, 9)), lsf_sigma (n, 9),
    samples (n, 9, 18) uint16 (zero past n_samples; zero rows for undetected transits).
    """
    n = len(t)
    flux_e_s = np.asarray(flux_e_s, dtype=float)
    sm_est = np.maximum(flux_e_s, 0.0) * (1.0 + SM_FLUX_ERROR * rng.standard_normal(n))
    g_sm = ins.g_of_flux_e_s(sm_est)
    detected = np.isfinite(g_sm) & (g_sm <= ins.DETECTION_LIMIT_G)
    g_sm = np.where(np.isfinite(g_sm), g_sm, 99.0)
    n_samples = ins.window_samples(g_sm)
    mag_class = ins.magnitude_class(g_sm)
    flux_ccd = flux_e_s * ins.CCD_CROSSING_S
    gate, saturated = ins.gate_for_peak(sm_est * ins.CCD_CROSSING_S * _PEAK_FRACTION)
    gain_factor = 2.0 ** (-gate.astype(float))

    k = np.arange(1, ins.N_AF + 1)
    t_k = t[:, None] + (k - ins.REFERENCE_COLUMN) * ins.CCD_CROSSING_S  # true AF crossings
    obt_k = obt_of(t_k)
    tdi = ins.TDI_PERIOD_S
    predicted = obt_k[:, 0] + PROPAGATION_ERROR_TDI * tdi * rng.standard_normal(n)
    obt_af1 = (np.round(predicted / tdi) - n_samples / 2) * tdi
    window_start = obt_af1[:, None] + (k - 1) * ins.CCD_CROSSING_S
    x0 = (obt_k - window_start) / tdi

    sigma = payload.lsf_sigma(t_k, row[:, None])
    background = (ins.SKY_BACKGROUND_E + payload.dark_e(t, row))[:, None] * np.ones(ins.N_AF)
    frac = lsf_fractions(x0, sigma, MAX_SAMPLES)
    used = (np.arange(MAX_SAMPLES) < n_samples[:, None, None]) & detected[:, None, None]
    used = np.broadcast_to(used, frac.shape)
    signal = (flux_ccd[:, None, None] * frac + background[:, :, None]) * gain_factor[:, None, None]
    counts = rng.poisson(np.where(used, signal, 0.0)).astype(float)
    counts += ins.READ_NOISE_E * rng.standard_normal(counts.shape)
    bias = payload.bias(t_k.ravel()).reshape(n, ins.N_AF, ins.N_ROWS, ins.N_CCD_COLUMNS)
    bias_rc = bias[np.arange(n)[:, None], np.arange(ins.N_AF)[None, :], row[:, None], k[None, :]]
    adu = np.round(counts / ins.GAIN_E_PER_ADU + bias_rc[:, :, None])
    samples = np.clip(adu, 0, ins.ADC_MAX).astype(np.uint16)
    samples[~used] = 0
    saturated = saturated | (samples >= ins.ADC_MAX).any(axis=(1, 2))
    return {
        "detected": detected,
        "g_sm": g_sm,
        "mag_class": mag_class,
        "n_samples": n_samples,
        "gate": gate,
        "saturated": saturated & detected,
        "sm_flux": np.clip(sm_est * ins.CCD_CROSSING_S, 0, 2**32 - 1).astype(np.uint32),
        "obt_af1": obt_af1,
        "x0": x0,
        "flux_ccd": flux_ccd * gain_factor,
        "background": background * gain_factor[:, None],
        "lsf_sigma": sigma,
        "samples": samples,
    }
