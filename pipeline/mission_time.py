"""Mission time: the one time scale of the project, and its links to UTC and on-board time.

Mission time is seconds of UTC since 2010-01-01T00:00:00 (Gaia's reference epoch J2010), counted without
leap seconds (a documented simplification). On-board time (OBT) is the spacecraft clock, which runs at
OBT_RATE from OBT_OFFSET_S; the auxiliary time-correlation packets let the ground recover the link.
"""

from __future__ import annotations

import numpy as np

from pipeline.instrument import OBT_OFFSET_S, OBT_RATE

EPOCH = np.datetime64("2010-01-01T00:00:00", "ns")
JD_EPOCH = 2455197.5  # Julian Date of EPOCH
DAY_S = 86400.0


def from_utc(value) -> np.ndarray:
    """ISO string(s) or datetime64 -> mission seconds (float64)."""
    t = np.asarray(value, dtype="datetime64[ns]")
    return (t - EPOCH).astype("timedelta64[ns]").astype(np.int64) / 1e9


def to_utc(t) -> np.ndarray:
    """Mission seconds -> datetime64[ns]."""
    return EPOCH + np.round(np.asarray(t, dtype=float) * 1e9).astype("timedelta64[ns]")


def iso(t) -> str:
    """Mission seconds -> 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (scalar)."""
    return str(np.datetime_as_string(to_utc(float(t)), unit="us")) + "Z"


def julian_date(t) -> np.ndarray:
    return JD_EPOCH + np.asarray(t, dtype=float) / DAY_S


def obt_of(t) -> np.ndarray:
    """Mission seconds -> on-board time seconds (the nominal clock model)."""
    return OBT_OFFSET_S + np.asarray(t, dtype=float) * OBT_RATE


def mission_of_obt(obt) -> np.ndarray:
    """On-board time seconds -> mission seconds (the nominal clock model)."""
    return (np.asarray(obt, dtype=float) - OBT_OFFSET_S) / OBT_RATE
