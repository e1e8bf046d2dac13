"""The inputs of the alert detectors: the photometric history of a set of sources, and the sources.

A History holds one row per field-of-view transit of every source examined in a run (one HEALPix pixel for
the operational scan, one light curve for the real-data replay), sorted by (source_id, t), so that every
per-source statistic is a segment reduction over contiguous rows (pipeline.alerts.stats). Sources holds
one row per distinct source of a History, aligned with np.unique(history.source_id).

Both are plain numpy containers; `from_rows` validates lengths and dtypes and sorts, so a builder (the
database scan, the light-curve loader, a test) cannot hand the detectors misaligned or unsorted arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


class HistoryError(ValueError):
    """A History or Sources built from inconsistent columns (the message names the column and the problem)."""


_HISTORY_DTYPES = {
    "source_id": np.int64,
    "t": np.float64,
    "g_mag": np.float64,
    "g_mag_err": np.float64,
    "fov": np.int16,
    "flags": np.int32,
    "new": np.bool_,
    "bad_chunk": np.bool_,
}
_OPTIONAL_DEFAULTS = {"flags": 0, "new": False, "bad_chunk": False}


def _column(owner: str, name: str, value, dtype, n: int | None) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim != 1:
        raise HistoryError(f"{owner}.{name} must be one-dimensional, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise HistoryError(f"{owner}.{name} has {a.shape[0]} rows, expected {n} (as {owner}.source_id)")
    if a.size and np.dtype(dtype).kind in "iub":
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
                raise HistoryError(f"{owner}.{name} must hold integers, got non-integer values")
        elif a.dtype.kind not in "iub":
            raise HistoryError(f"{owner}.{name} must be {np.dtype(dtype).name}, got {a.dtype}")
        if np.dtype(dtype).kind == "b" and not np.all((a == 0) | (a == 1)):
            raise HistoryError(f"{owner}.{name} must be boolean")
        if np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            if a.min() < info.min or a.max() > info.max:
                raise HistoryError(f"{owner}.{name} has values outside the range of {np.dtype(dtype).name}")
    elif a.size and np.dtype(dtype).kind == "f" and a.dtype.kind not in "iuf":
        raise HistoryError(f"{owner}.{name} must be numeric, got {a.dtype}")
    return np.ascontiguousarray(a.astype(dtype, copy=False))


@dataclass(frozen=True)
class History:
    """Photometric history of a set of sources, one row per transit, sorted by (source_id, t).

    t is UTC mission seconds (the transits.t column; pipeline.mission_time converts), g_mag and g_mag_err
    are NaN where missing, fov is 0 (preceding) or 1 (following), flags the transit flags of
    pipeline.reduce.image_params, new marks the transits that arrived in this run (their chunk revision is
    not yet scanned) and bad_chunk the transits of a chunk with a health event at or above the configured
    severity.
    """

    source_id: np.ndarray  # int64
    t: np.ndarray  # float64, UTC mission seconds
    g_mag: np.ndarray  # float64, NaN where missing
    g_mag_err: np.ndarray  # float64, NaN where missing
    fov: np.ndarray  # int16
    flags: np.ndarray  # int32
    new: np.ndarray  # bool
    bad_chunk: np.ndarray  # bool

    @classmethod
    def from_rows(cls, **columns) -> History:
        """Validate lengths and dtypes, then sort by (source_id, t).

        flags, new and bad_chunk may be left out (0, False, False); g_mag_err may be left out, and is then
        taken from the Hodgkin et al. (2021) per-transit error model at g_mag. Unknown columns raise
        HistoryError, so a misspelt column cannot be silently dropped.
        """
        unknown = set(columns) - set(_HISTORY_DTYPES)
        if unknown:
            raise HistoryError(f"History: unknown column(s) {', '.join(sorted(unknown))}")
        for name in ("source_id", "t", "g_mag", "fov"):
            if name not in columns:
                raise HistoryError(f"History: column {name!r} is required")
        n = np.asarray(columns["source_id"]).shape[0] if np.ndim(columns["source_id"]) == 1 else None
        if n is None:
            raise HistoryError("History.source_id must be one-dimensional")
        if "g_mag_err" not in columns:
            from pipeline.instrument import hodgkin_sigma_g

            columns["g_mag_err"] = hodgkin_sigma_g(np.asarray(columns["g_mag"], dtype=float))
        out = {}
        for name, dtype in _HISTORY_DTYPES.items():
            value = columns.get(name)
            if value is None:
                value = np.full(n, _OPTIONAL_DEFAULTS[name])
            out[name] = _column("History", name, value, dtype, n)
        if not np.all(np.isfinite(out["t"])):
            raise HistoryError("History.t must be finite (every transit has a time)")
        order = np.lexsort((out["t"], out["source_id"]))
        if not np.all(order[1:] > order[:-1]):
            out = {k: v[order] for k, v in out.items()}
        return cls(**out)

    @classmethod
    def empty(cls) -> History:
        return cls.from_rows(source_id=np.zeros(0, np.int64), t=[], g_mag=[], fov=np.zeros(0, np.int16))

    def __len__(self) -> int:
        return int(self.source_id.shape[0])

    def take(self, index) -> History:
        """The rows selected by a boolean mask or sorted integer index (keeps the sort order)."""
        return History(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def select_sources(self, source_ids) -> History:
        """The rows of the given sources."""
        return self.take(np.isin(self.source_id, np.asarray(source_ids, dtype=np.int64)))

    def concat(self, *others: History) -> History:
        """This history and others in one (re-sorted)."""
        parts = (self, *others)
        return History.from_rows(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(self)}
        )


@dataclass(frozen=True)
class Sources:
    """Per source of a History, aligned with np.unique(history.source_id).

    g_ref is the catalogue G (NaN for sources the pipeline created, origin 'new'); brighter_neighbour is
    True when a catalogue source brighter than this one lies within thresholds.neighbour_radius_arcsec.
    """

    source_id: np.ndarray  # int64, sorted unique
    g_ref: np.ndarray  # float64, NaN for new sources
    brighter_neighbour: np.ndarray  # bool
    ra: np.ndarray  # deg
    dec: np.ndarray  # deg

    @classmethod
    def from_rows(cls, *, source_id, g_ref=None, brighter_neighbour=None, ra=None, dec=None) -> Sources:
        """Validate and sort by source_id; left-out columns default to NaN (g_ref, ra, dec) and False."""
        sid = _column("Sources", "source_id", source_id, np.int64, None)
        n = sid.shape[0]
        cols = {
            "g_ref": (g_ref, np.float64, np.nan),
            "brighter_neighbour": (brighter_neighbour, np.bool_, False),
            "ra": (ra, np.float64, np.nan),
            "dec": (dec, np.float64, np.nan),
        }
        out = {"source_id": sid}
        for name, (value, dtype, default) in cols.items():
            out[name] = _column("Sources", name, np.full(n, default) if value is None else value, dtype, n)
        order = np.argsort(sid, kind="stable")
        out = {k: v[order] for k, v in out.items()}
        if n > 1 and np.any(out["source_id"][1:] == out["source_id"][:-1]):
            dup = out["source_id"][1:][out["source_id"][1:] == out["source_id"][:-1]][0]
            raise HistoryError(f"Sources.source_id must be unique; {int(dup)} appears more than once")
        return cls(**out)

    @classmethod
    def for_history(cls, history: History, **columns) -> Sources:
        """Sources of every source of history (columns given per source, in np.unique order, or defaults)."""
        return cls.from_rows(source_id=np.unique(history.source_id), **columns)

    def __len__(self) -> int:
        return int(self.source_id.shape[0])

    def aligned(self, source_ids: np.ndarray) -> Sources:
        """The rows of these source ids (sorted unique), in their order; HistoryError if one is missing."""
        ids = np.asarray(source_ids, dtype=np.int64)
        pos = np.searchsorted(self.source_id, ids)
        pos_c = np.minimum(pos, max(len(self) - 1, 0))
        ok = (pos < len(self)) & (self.source_id[pos_c] == ids) if len(self) else np.zeros(ids.shape, bool)
        if not np.all(ok):
            raise HistoryError(f"Sources has no row for source {int(ids[~ok][0])} of the History")
        return Sources(**{f.name: getattr(self, f.name)[pos_c] for f in fields(self)})
