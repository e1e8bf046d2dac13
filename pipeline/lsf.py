"""The along-scan line-spread function (LSF): the one model shared by simulator and image-parameter fit.

Model: a Gaussian of width sigma (AL pixels) integrated over each 1-pixel AL sample. Sample j of a window
covers [j, j+1) in sample coordinates; x0 is the image centre in the same coordinates, so a centred image
in an N-sample window has x0 = N/2. The fraction of the flux in sample j is
    L_j = Phi((j + 1 - x0) / sigma) - Phi((j - x0) / sigma),
with Phi the standard normal CDF. Defocus widens sigma (health monitoring watches it).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr


def _edges(n_samples: int) -> np.ndarray:
    return np.arange(n_samples + 1, dtype=float)


def lsf_fractions(x0: np.ndarray, sigma: np.ndarray | float, n_samples: int) -> np.ndarray:
    """Flux fraction per sample: (n, n_samples) for n images centred at x0 (sample units)."""
    x0 = np.asarray(x0, dtype=float)[..., None]
    s = np.asarray(sigma, dtype=float)
    s = s[..., None] if s.ndim else s
    cdf = ndtr((_edges(n_samples) - x0) / s)
    return np.diff(cdf, axis=-1)


def lsf_derivative_x0(x0: np.ndarray, sigma: np.ndarray | float, n_samples: int) -> np.ndarray:
    """d L_j / d x0, for the Cramer-Rao bound and the Newton steps of the fit."""
    x0 = np.asarray(x0, dtype=float)[..., None]
    s = np.asarray(sigma, dtype=float)
    s = s[..., None] if s.ndim else s
    pdf = np.exp(-0.5 * ((_edges(n_samples) - x0) / s) ** 2) / (np.sqrt(2.0 * np.pi) * s)
    return -np.diff(pdf, axis=-1)
