"""Filters: named rules that reject a detector's verdict, each a pure function over arrays.

Every filter takes the FilterInput of the raised verdicts (one row per verdict) and the Thresholds and
returns a boolean array: True where the verdict is rejected. evaluate() runs every filter in FILTERS on
every verdict (the filters do not short-circuit, so a verdict's `rejected_by` names every filter that
applies, and the run record can count rejections per filter honestly).

The triggering transits of a verdict are the good new transits of its source (every one of them agreed
with the detection: see pipeline.alerts.detect).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.alerts.thresholds import Thresholds
from pipeline.instrument import hodgkin_sigma_g


@dataclass(frozen=True)
class FilterInput:
    """Per verdict: what the filters look at."""

    detector: np.ndarray  # str objects
    n_fov: np.ndarray  # distinct fields of view among the triggering transits
    brighter_neighbour: np.ndarray  # bool (Sources.brighter_neighbour)
    historic_mag: np.ndarray  # NaN for new sources
    historic_std: np.ndarray  # NaN for new sources or fewer than 2 historic transits
    trigger_flags: np.ndarray  # int64: OR of the triggering transits' flags
    trigger_bad_chunk: np.ndarray  # bool: a triggering transit lies in a chunk with a health event


def single_fov(f: FilterInput, th: Thresholds) -> np.ndarray:
    """Seen in one field of view only: a detection not confirmed by the other telescope 106.5 min later
    (cosmic rays, optical ghosts, a Solar System object, one bad window) is not trusted."""
    return f.n_fov < th.min_fovs


def bright_neighbour(f: FilterInput, th: Thresholds) -> np.ndarray:
    """A brighter catalogue source within neighbour_radius_arcsec: its light in the window varies with the
    scan angle, which mimics brightening and fading."""
    return np.asarray(f.brighter_neighbour, dtype=bool)


def variable_history(f: FilterInput, th: Thresholds) -> np.ndarray:
    """Already strongly variable: historic scatter above variable_scatter_ratio x the error model at the
    historic mean (an excursion is that star's normal behaviour, not an alert)."""
    model = hodgkin_sigma_g(np.where(np.isfinite(f.historic_mag), f.historic_mag, 20.0))
    with np.errstate(invalid="ignore"):
        return np.isfinite(f.historic_std) & (f.historic_std > th.variable_scatter_ratio * model)


def quality_flags(f: FilterInput, th: Thresholds) -> np.ndarray:
    """A triggering transit carries an image-parameter flag of thresholds.quality_flags (saturation)."""
    return (np.asarray(f.trigger_flags, dtype=np.int64) & int(th.quality_flags)) != 0


def bad_chunk(f: FilterInput, th: Thresholds) -> np.ndarray:
    """A triggering transit lies in a chunk with a health event at or above min_health_severity."""
    return np.asarray(f.trigger_bad_chunk, dtype=bool)


FILTERS: tuple[tuple[str, Callable[[FilterInput, Thresholds], np.ndarray]], ...] = (
    ("single_fov", single_fov),
    ("bright_neighbour", bright_neighbour),
    ("variable_history", variable_history),
    ("quality_flags", quality_flags),
    ("bad_chunk", bad_chunk),
)
FILTER_NAMES = tuple(name for name, _ in FILTERS)


def apply_filters(f: FilterInput, th: Thresholds) -> np.ndarray:
    """rejected_by per verdict: '' or the names of the filters that reject it, joined by ','."""
    n = f.detector.shape[0]
    out = np.full(n, "", dtype=object)
    for name, rule in FILTERS:
        hit = np.asarray(rule(f, th), dtype=bool)
        if hit.shape != (n,):
            raise ValueError(f"filter {name} returned shape {hit.shape}, expected ({n},)")
        if np.any(hit):
            prev = out[hit]
            out[hit] = np.where(prev == "", name, prev + "," + name)
    return out
