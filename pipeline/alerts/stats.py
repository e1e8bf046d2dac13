"""Per-source statistics of a History, vectorised over all its sources (no Python loop per source).

A History is sorted by (source_id, t), so each source is a contiguous segment of rows; every statistic
here is a segment reduction (np.bincount over the segment index, np.minimum.reduceat over the segment
starts, or a lexsort by (segment, value) for medians). That keeps a pixel of 10^5 sources with 10^7
transits at numpy speed, and it makes the statistics of one source independent of which other sources
share the History (tests/test_alerts_science.py checks that evaluate on many sources equals evaluate on
each alone).

Definitions
- good transit: finite g_mag and none of thresholds.failure_flags set.
- historic: good and not new; new: good and new (arrived in this run).
- historic mean: inverse-variance weighted mean of the historic transits within historic_clip_sigma robust
  sigmas (1.4826 MAD, floored at the error model) of their median; historic_std the (unweighted, ddof=1)
  scatter of the same transits; historic_err the error of the mean: the larger of historic_std/sqrt(n) and
  the formal 1/sqrt(sum w); historic_span the time from the first to the last good historic transit.
- per-transit error: the larger of the transit's g_mag_err and the Hodgkin et al. (2021) error model at
  its G (the reduction's g_mag_err is photon noise only; the model adds calibration and PSF errors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.alerts.history import History
from pipeline.instrument import hodgkin_sigma_g

MAD_TO_SIGMA = 1.4826


def transit_sigma(g_mag: np.ndarray, g_mag_err: np.ndarray) -> np.ndarray:
    """Per-transit G error (mag): the larger of the stated error and the Hodgkin et al. 2021 model."""
    model = hodgkin_sigma_g(np.where(np.isfinite(g_mag), g_mag, 20.0))
    return np.fmax(np.asarray(g_mag_err, dtype=float), model)


def segment_median(values: np.ndarray, seg: np.ndarray, n_seg: int, mask: np.ndarray) -> np.ndarray:
    """Median of values[mask] per segment index seg (n_seg,), NaN for segments without a masked row."""
    idx = np.flatnonzero(mask)
    s = seg[idx]
    v = values[idx]
    order = np.lexsort((v, s))
    v = v[order]
    cnt = np.bincount(s, minlength=n_seg)
    out = np.full(n_seg, np.nan)
    has = cnt > 0
    if not np.any(has):
        return out
    first = np.cumsum(cnt) - cnt
    lo = first + (cnt - 1) // 2
    hi = first + cnt // 2
    out[has] = 0.5 * (v[lo[has]] + v[hi[has]])
    return out


@dataclass(frozen=True)
class SourceStats:
    """Statistics per source of a History (arrays of n_sources, in np.unique(history.source_id) order) and
    the row bookkeeping the detectors need (arrays of len(history))."""

    source_id: np.ndarray  # int64 (n_sources,)
    start: np.ndarray  # first row of each source's segment
    count: np.ndarray  # rows per source
    n_historic: np.ndarray  # int64: good historic transits kept (after clipping)
    n_historic_good: np.ndarray  # int64: good historic transits (before clipping)
    historic_mag: np.ndarray  # weighted mean G of the kept historic transits
    historic_std: np.ndarray  # their scatter (ddof=1; NaN below 2)
    historic_err: np.ndarray  # error of the mean
    n_new: np.ndarray  # int64: good new transits
    n_new_fov: np.ndarray  # int64: distinct fields of view among the good new transits
    new_mag_min: np.ndarray  # brightest good new G (NaN without)
    new_mag_max: np.ndarray  # faintest good new G (NaN without)
    historic_span: np.ndarray  # seconds from the first to the last good historic transit (NaN without)
    new_first_row: np.ndarray  # row of the earliest good new transit (-1 without)
    new_quality_flags: np.ndarray  # int64: OR of the flags of the good new transits
    new_bad_chunk: np.ndarray  # bool: a good new transit lies in a bad chunk
    row_source: np.ndarray  # (rows,) segment index of each row
    row_sigma: np.ndarray  # (rows,) per-transit error (transit_sigma)
    good: np.ndarray  # (rows,) good transit
    new_good: np.ndarray  # (rows,) good and new


def source_stats(history: History, failure_flags: int, clip_sigma: float) -> SourceStats:
    """Per-source statistics of history (see the module docstring for the definitions)."""
    h = history
    sid, start, count = np.unique(h.source_id, return_index=True, return_counts=True)
    n_src = sid.shape[0]
    seg = np.repeat(np.arange(n_src), count)
    g = h.g_mag
    good = np.isfinite(g) & ((h.flags.astype(np.int64) & int(failure_flags)) == 0)
    hist = good & ~h.new
    new_good = good & h.new
    sigma = transit_sigma(g, h.g_mag_err)

    # robust clipping of the history around its median
    med = segment_median(g, seg, n_src, hist)
    absdev = np.abs(g - med[seg])
    mad = segment_median(absdev, seg, n_src, hist)
    scale = np.fmax(MAD_TO_SIGMA * mad, hodgkin_sigma_g(np.where(np.isfinite(med), med, 20.0)))
    keep = hist & (absdev <= clip_sigma * scale[seg])

    w = np.where(keep, 1.0 / sigma**2, 0.0)
    gz = np.where(keep, g, 0.0)
    n_hist = np.bincount(seg, weights=keep, minlength=n_src).astype(np.int64)
    n_hist_good = np.bincount(seg, weights=hist, minlength=n_src).astype(np.int64)
    sw = np.bincount(seg, weights=w, minlength=n_src)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_hist > 0, np.bincount(seg, weights=w * gz, minlength=n_src) / sw, np.nan)
        dev2 = np.where(keep, (g - mean[seg]) ** 2, 0.0)
        var = np.bincount(seg, weights=dev2, minlength=n_src) / (n_hist - 1)
        std = np.where(n_hist >= 2, np.sqrt(var), np.nan)
        err = np.where(n_hist > 0, np.fmax(std / np.sqrt(n_hist), 1.0 / np.sqrt(sw)), np.nan)

    n_new = np.bincount(seg, weights=new_good, minlength=n_src).astype(np.int64)
    fov_seen = np.zeros((n_src, 2), dtype=bool)
    fov_seen[seg[new_good], np.clip(h.fov[new_good], 0, 1)] = True
    n_fov = fov_seen.sum(axis=1).astype(np.int64)

    rows = np.arange(len(h))
    if len(h):
        big = len(h) + 1
        first_new = np.minimum.reduceat(np.where(new_good, rows, big), start)
        first_new = np.where(first_new < big, first_new, -1)
        mag_min = np.minimum.reduceat(np.where(new_good, g, np.inf), start)
        mag_max = np.maximum.reduceat(np.where(new_good, g, -np.inf), start)
        t_first = np.minimum.reduceat(np.where(hist, h.t, np.inf), start)
        t_last = np.maximum.reduceat(np.where(hist, h.t, -np.inf), start)
        qflags = np.bitwise_or.reduceat(np.where(new_good, h.flags.astype(np.int64), 0), start)
        bad = np.logical_or.reduceat(new_good & h.bad_chunk, start)
    else:
        first_new = np.zeros(0, np.int64)
        mag_min = mag_max = t_first = t_last = np.zeros(0)
        qflags = np.zeros(0, np.int64)
        bad = np.zeros(0, bool)
    mag_min = np.where(n_new > 0, mag_min, np.nan)
    mag_max = np.where(n_new > 0, mag_max, np.nan)
    span = np.where(n_hist_good > 0, t_last - t_first, np.nan)

    return SourceStats(
        source_id=sid,
        start=start,
        count=count,
        n_historic=n_hist,
        n_historic_good=n_hist_good,
        historic_mag=mean,
        historic_std=std,
        historic_err=err,
        n_new=n_new,
        n_new_fov=n_fov,
        new_mag_min=mag_min,
        new_mag_max=mag_max,
        historic_span=span,
        new_first_row=first_new.astype(np.int64),
        new_quality_flags=qflags.astype(np.int64),
        new_bad_chunk=bad.astype(bool),
        row_source=seg,
        row_sigma=sigma,
        good=good,
        new_good=new_good,
    )
