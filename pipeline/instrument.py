"""The instrument: scanning constants, focal-plane geometry, detector and photometric model.

One place for every number that both the simulator and the reduction use, so that the two cannot drift
apart. Values follow Gaia (Gaia Collaboration 2016, A&A 595, A1; de Bruijne et al.) where Gaia has one;
the simplifications are listed in docs/telemetry.md.

Conventions
- Field angles in degrees: eta along scan (increasing in the direction the images move), zeta across scan.
- Field of view 0 is the preceding FoV, 1 the following FoV (it sees a source 106.5 min later).
- CCD columns: index 0 is the sky mapper (SM), 1..9 are AF1..AF9. Rows 0..6 across scan.
"""

from __future__ import annotations

import numpy as np

# --- scanning law (nominal) ----------------------------------------------------------------------------
SPIN_RATE_ARCSEC_S = 59.9641857803
SPIN_RATE_RAD_S = np.deg2rad(SPIN_RATE_ARCSEC_S / 3600.0)
SPIN_PERIOD_S = 2.0 * np.pi / SPIN_RATE_RAD_S  # about 21,613 s (6.0 h)
SOLAR_ASPECT_ANGLE_DEG = 45.0
PRECESSION_LOOPS_PER_YEAR = 5.8
BASIC_ANGLE_DEG = 106.5
N_FOV = 2

# --- focal plane -----------------------------------------------------------------------------------------
PIXEL_AL_MAS = 58.9  # along-scan pixel size
PIXEL_AC_MAS = 176.8  # across-scan pixel size
CCD_AL_PIXELS = 4500
CCD_AC_PIXELS = 1966
N_ROWS = 7
N_AF = 9
N_CCD_COLUMNS = 1 + N_AF  # SM + AF1..AF9
TDI_PERIOD_S = PIXEL_AL_MAS / 1000.0 / SPIN_RATE_ARCSEC_S  # one AL pixel: about 0.982 ms
CCD_CROSSING_S = CCD_AL_PIXELS * TDI_PERIOD_S  # about 4.42 s
CCD_PITCH_DEG = CCD_CROSSING_S * SPIN_RATE_ARCSEC_S / 3600.0  # AL angle between CCD columns (no gaps)
FOV_AC_WIDTH_DEG = 0.7
ROW_WIDTH_DEG = CCD_AC_PIXELS * PIXEL_AC_MAS / 3.6e6  # about 0.0966 deg
ROW_GAP_DEG = (FOV_AC_WIDTH_DEG - N_ROWS * ROW_WIDTH_DEG) / (N_ROWS - 1)
REFERENCE_COLUMN = 5  # the FoV reference line eta = 0 is the readout line of AF5

# --- windows and on-board detection ---------------------------------------------------------------------
DETECTION_LIMIT_G = 20.7
MAG_CLASS_EDGES = (13.0, 16.0)  # class 0: G <= 13, 1: 13 < G <= 16, 2: G > 16 (downlink priority order)
N_MAG_CLASSES = 3
WINDOW_SAMPLES_BRIGHT = 18  # G <= 16
WINDOW_SAMPLES_FAINT = 12  # G > 16
WINDOW_LENGTH_SPLIT_G = 16.0

# --- detector and photometry -----------------------------------------------------------------------------
ZERO_POINT_G = 25.6874  # G = -2.5 log10(flux in e-/s) + ZP (Gaia DR2/EDR3 G zero point)
GAIN_E_PER_ADU = 4.0
READ_NOISE_E = 5.0
NOMINAL_BIAS_ADU = 1500.0
ADC_MAX = 65535
SKY_BACKGROUND_E = 12.0  # e- per AL sample (1 x 12 pixels) at high Galactic latitude
MAX_GATE = 10  # exposure fraction 2**-gate; brighter stars than the last gate can save saturate
GATE_PEAK_FRACTION = 0.8  # choose the weakest gate that keeps the peak sample below this of the ADC range
NOMINAL_LSF_SIGMA_PX = 0.9  # Gaussian LSF sigma in AL pixels (FWHM about 125 mas)

# --- on-board clock --------------------------------------------------------------------------------------
OBT_OFFSET_S = 1.234567e6  # on-board time at mission time 0 (see pipeline.mission_time)
OBT_RATE = 1.0 + 4.0e-9  # on-board clock rate relative to UTC

# Geometric transits lost before downlink: Gaia's 70 usable transits per source over five years assume
# about 20% of what is collected on board does not yield useful data (on-board data deletion, dead time).
ONBOARD_LOSS_FRACTION = 0.2


def column_eta_deg(column: np.ndarray | int) -> np.ndarray:
    """Along-scan field angle of the readout line of CCD column (0 = SM, 1..9 = AF1..AF9)."""
    return (np.asarray(column, dtype=float) - REFERENCE_COLUMN) * CCD_PITCH_DEG


def row_of_zeta(zeta_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Across-scan field angle -> (row, AC pixel, on a CCD). Sources in a gap or outside: on_ccd False."""
    zeta = np.asarray(zeta_deg, dtype=float)
    pitch = ROW_WIDTH_DEG + ROW_GAP_DEG
    u = zeta + FOV_AC_WIDTH_DEG / 2.0
    row = np.floor(u / pitch).astype(np.int64)
    within = u - row * pitch
    ac_pixel = within / (PIXEL_AC_MAS / 3.6e6)
    on_ccd = (row >= 0) & (row < N_ROWS) & (within < ROW_WIDTH_DEG)
    return np.clip(row, 0, N_ROWS - 1), ac_pixel, on_ccd


def zeta_of_row(row: np.ndarray, ac_pixel: np.ndarray) -> np.ndarray:
    """Inverse of row_of_zeta: AC field angle of an AC pixel coordinate on a row."""
    pitch = ROW_WIDTH_DEG + ROW_GAP_DEG
    return np.asarray(row) * pitch + np.asarray(ac_pixel) * (PIXEL_AC_MAS / 3.6e6) - FOV_AC_WIDTH_DEG / 2.0


def flux_e_s(g: np.ndarray) -> np.ndarray:
    """G magnitude -> photo-electrons per second."""
    return 10.0 ** (-0.4 * (np.asarray(g, dtype=float) - ZERO_POINT_G))


def g_of_flux_e_s(flux: np.ndarray) -> np.ndarray:
    """Photo-electrons per second -> G magnitude (NaN for non-positive flux)."""
    f = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, ZERO_POINT_G - 2.5 * np.log10(np.where(f > 0, f, 1.0)), np.nan)


def flux_e_per_ccd(g: np.ndarray) -> np.ndarray:
    """Expected photo-electrons collected in one CCD crossing, without gating."""
    return flux_e_s(g) * CCD_CROSSING_S


def magnitude_class(g: np.ndarray) -> np.ndarray:
    """Downlink priority class from the on-board magnitude estimate (0 brightest)."""
    return np.searchsorted(np.asarray(MAG_CLASS_EDGES), np.asarray(g, dtype=float), side="left").astype(
        np.int64
    )


def window_samples(g: np.ndarray) -> np.ndarray:
    """AF window length in AL samples from the on-board magnitude estimate."""
    return np.where(np.asarray(g) <= WINDOW_LENGTH_SPLIT_G, WINDOW_SAMPLES_BRIGHT, WINDOW_SAMPLES_FAINT)


def hodgkin_sigma_g(g: np.ndarray) -> np.ndarray:
    """Per-transit G error (mag) of quiet stars, Hodgkin et al. 2021 (A&A 652, A76), clamped at G = 13."""
    x = np.clip(np.asarray(g, dtype=float), 13.0, None)
    return 3.43779 - x / 1.13759 + (x / 3.44123) ** 2 - (x / 6.51996) ** 3 + (x / 11.45922) ** 4


def gate_for_peak(peak_e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Choose the weakest TDI gate that keeps the peak sample unsaturated -> (gate, still_saturated)."""
    limit = GATE_PEAK_FRACTION * (ADC_MAX - NOMINAL_BIAS_ADU) * GAIN_E_PER_ADU
    peak = np.asarray(peak_e, dtype=float)
    need = np.ceil(np.log2(np.maximum(peak / limit, 1.0)))
    gate = np.clip(need, 0, MAX_GATE).astype(np.int64)
    return gate, need > MAX_GATE
