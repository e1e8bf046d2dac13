"""The alert detectors and `evaluate`: History + Sources + Thresholds -> Verdicts.

Detectors (a source raises at most one, they are mutually exclusive):

- new_source: no history (no good historic transit and no catalogue G) and good new transits whose mean
  G is brighter than new_source_max_g. Confirmation in both fields of view is the single_fov filter's
  job, so a one-telescope detection is still recorded, as rejected.
- brightening / fading: a reference (the robust historic mean of at least min_historic good historic
  transits, or else the catalogue G with no scatter; also the catalogue G, with the historic scatter, when
  the history is an event already under way: `history_under_way`) and at least min_new_transits good new
  transits, ALL
  of which differ from the reference in the same direction by at least min_delta_mag and min_significance.
  The significance of a transit is |G - reference| / sqrt(sigma_G^2 + historic_std^2 + historic_err^2),
  sigma_G the Hodgkin et al. (2021) per-transit error (pipeline.alerts.stats.transit_sigma). Requiring
  every transit of the run to agree (normally the two field-of-view transits of a visit) is the Gaia
  approach (Hodgkin et al. 2021, sec. 3) and what suppresses single-transit outliers.

The trigger of a verdict is the earliest good new transit (the convention of the Gaia alerts index,
whose Date is the first transit of the alerting visit); significance is the weakest of the agreeing
transits (new_source: the detection significance sqrt(sum (1.0857 / sigma_G)^2) of its new transits).
Every raised verdict then passes through every filter of pipeline.alerts.filters; rejected_by names those
that reject it ('' for a candidate).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from pipeline.alerts.filters import FilterInput, apply_filters
from pipeline.alerts.history import History, HistoryError, Sources
from pipeline.alerts.stats import SourceStats, source_stats
from pipeline.alerts.thresholds import Thresholds

DETECTORS = ("new_source", "brightening", "fading")
MAG_TO_SNR = 2.5 / np.log(10.0)  # flux signal-to-noise of a magnitude error: SNR = 1.0857 / sigma_mag


@dataclass(frozen=True)
class Verdicts:
    """One row per source that a detector raised in this run (survivors and the filtered), numpy arrays."""

    source_id: np.ndarray  # int64
    detector: np.ndarray  # str objects: 'new_source' | 'brightening' | 'fading'
    t_trigger: np.ndarray  # float64 mission seconds of the triggering transit (one of the new transits)
    alert_mag: np.ndarray  # float64 G of that transit
    historic_mag: np.ndarray  # float64, NaN for new sources
    historic_std: np.ndarray  # float64, NaN for new sources
    n_historic: np.ndarray  # int64
    significance: np.ndarray  # float64 (sigma)
    rejected_by: np.ndarray  # str objects: '' for a candidate, else the filter names joined by ','

    def __len__(self) -> int:
        return int(self.source_id.shape[0])

    def take(self, index) -> Verdicts:
        return Verdicts(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @property
    def candidates(self) -> Verdicts:
        """The rows no filter rejected."""
        return self.take(self.rejected_by == "")

    @classmethod
    def empty(cls) -> Verdicts:
        f, i, o = np.zeros(0), np.zeros(0, np.int64), np.zeros(0, dtype=object)
        return cls(i, o, f, f, f, f, i, f, o.copy())

    def rows(self) -> list[dict]:
        """The verdicts as a list of dicts of Python scalars (reports, logs)."""
        cols = [f.name for f in fields(self)]
        return [
            {
                c: getattr(self, c)[k].item() if hasattr(getattr(self, c)[k], "item") else getattr(self, c)[k]
                for c in cols
            }
            for k in range(len(self))
        ]


def history_under_way(history: History, st: SourceStats, g_ref: np.ndarray, th: Thresholds) -> np.ndarray:
    """Per source: its history is an event already under way, not the source's normal brightness.

    True for a source with a catalogue G whose every good historic transit departs from that G in the same
    direction by at least min_delta_mag and min_significance (the test a new visit must pass), over a
    history spanning less than catalogue_history_days. The event began before the history did (its first
    visits could not raise it: one field of view, too faint, filtered), so the history is no reference and
    the catalogue G is. A history spanning longer that departs all along is a catalogue G that does not
    describe the source (a constant offset, a slow variable): the history stays the reference, so such a
    source is not raised again at every visit.
    """
    seg = st.row_source
    n_src = st.source_id.shape[0]
    hist = st.good & ~history.new
    with np.errstate(invalid="ignore"):
        delta = history.g_mag - g_ref[seg]
        signif = delta / st.row_sigma
        fainter = hist & (delta >= th.min_delta_mag) & (signif >= th.min_significance)
        brighter = hist & (delta <= -th.min_delta_mag) & (-signif >= th.min_significance)
    n = st.n_historic_good
    every = (np.bincount(seg, weights=fainter, minlength=n_src) == n) | (
        np.bincount(seg, weights=brighter, minlength=n_src) == n
    )
    with np.errstate(invalid="ignore"):
        young = st.historic_span < th.catalogue_history_days * 86400.0
    return np.isfinite(g_ref) & (n > 0) & every & young


def evaluate(history: History, sources: Sources, thresholds: Thresholds) -> Verdicts:
    """Run the detectors on every source of history, then the filters on what they raised.

    history holds the full photometric history of the sources (new=True on the transits of this run);
    sources must have a row for every source of history (extra rows are ignored).
    """
    th = thresholds
    if len(history) == 0:
        return Verdicts.empty()
    st = source_stats(history, th.failure_flags, th.historic_clip_sigma)
    src = sources.aligned(st.source_id)
    if src.source_id.shape != st.source_id.shape:  # pragma: no cover - aligned() guarantees it
        raise HistoryError("Sources are not aligned with the History")

    g = history.g_mag
    seg = st.row_source
    n_src = st.source_id.shape[0]

    # reference magnitude and scatter: the history, or else the catalogue G; also the catalogue G when the
    # history is an event already under way (it departs from the catalogue G in every transit)
    under_way = history_under_way(history, st, src.g_ref, th)
    has_history = (st.n_historic >= th.min_historic) & ~under_way
    catalogue = ~has_history & np.isfinite(src.g_ref)
    ref = np.where(has_history, st.historic_mag, np.where(catalogue, src.g_ref, np.nan))
    ref_var = np.where(
        has_history,
        np.nan_to_num(st.historic_std) ** 2 + st.historic_err**2,
        np.where(under_way, np.nan_to_num(st.historic_std) ** 2, 0.0),
    )

    # per new transit: difference and significance against the reference
    ng = st.new_good
    with np.errstate(invalid="ignore"):
        delta = g - ref[seg]
        signif = delta / np.sqrt(st.row_sigma**2 + ref_var[seg])
        bright_ok = ng & (delta <= -th.min_delta_mag) & (-signif >= th.min_significance)
        faint_ok = ng & (delta >= th.min_delta_mag) & (signif >= th.min_significance)
    n_bright = np.bincount(seg, weights=bright_ok, minlength=n_src)
    n_faint = np.bincount(seg, weights=faint_ok, minlength=n_src)
    enough = (st.n_new >= th.min_new_transits) & np.isfinite(ref)
    brightening = enough & (n_bright == st.n_new)
    fading = enough & (n_faint == st.n_new)

    # new sources: nothing to compare with
    no_history = (st.n_historic_good == 0) & ~np.isfinite(src.g_ref)
    new_mean = np.bincount(seg, weights=np.where(ng, g, 0.0), minlength=n_src) / np.maximum(st.n_new, 1)
    new_source = no_history & (st.n_new >= 1) & (new_mean < th.new_source_max_g)
    snr2 = np.bincount(seg, weights=np.where(ng, (MAG_TO_SNR / st.row_sigma) ** 2, 0.0), minlength=n_src)

    # weakest agreeing significance per source
    abs_sig = np.where(ng, np.abs(signif), np.inf)
    weakest = np.minimum.reduceat(abs_sig, st.start)

    raised = new_source | brightening | fading
    idx = np.flatnonzero(raised)
    detector = np.where(new_source[idx], "new_source", np.where(brightening[idx], "brightening", "fading"))
    detector = detector.astype(object)
    trig = st.new_first_row[idx]
    is_new = new_source[idx]
    f_in = FilterInput(
        detector=detector,
        n_fov=st.n_new_fov[idx],
        brighter_neighbour=src.brighter_neighbour[idx],
        historic_mag=np.where(is_new, np.nan, ref[idx]),
        historic_std=np.where(is_new | ~has_history[idx], np.nan, st.historic_std[idx]),
        trigger_flags=st.new_quality_flags[idx],
        trigger_bad_chunk=st.new_bad_chunk[idx],
    )
    return Verdicts(
        source_id=st.source_id[idx],
        detector=detector,
        t_trigger=history.t[trig],
        alert_mag=g[trig],
        historic_mag=f_in.historic_mag,
        historic_std=f_in.historic_std,
        n_historic=np.where(is_new, 0, st.n_historic[idx]).astype(np.int64),
        significance=np.where(is_new, np.sqrt(snr2[idx]), weakest[idx]),
        rejected_by=apply_filters(f_in, th),
    )
