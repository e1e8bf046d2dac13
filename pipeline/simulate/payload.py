"""Payload state over time: focal-plane temperatures, CCD bias levels, focus, power; and its anomalies.

The same state drives the housekeeping packets and the science windows, so an injected anomaly shows in
both: a temperature excursion raises the dark signal in the windows of its row, focus drift widens the
line-spread function, a bias jump shifts every sample of one CCD.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline import instrument
from pipeline.simulate.hashing import normal, uniform

ANOMALY_KINDS = ("temperature_excursion", "focus_drift", "bias_jump")
HK_CADENCE_S = 30.0
NOMINAL_FPA_K = 163.0
NOMINAL_MIRROR_K = (293.10, 293.35)
NOMINAL_POWER = np.array([28.0, 5.0, 3.3, 26.5, 17.0, 30.0, 12.0, 12.0])
DARK_E_PER_K = 2.0  # extra background per AL sample per kelvin above the nominal focal-plane temperature
RAMP_S = 900.0  # temperature excursions ramp up and down over 15 minutes


@dataclass(frozen=True)
class Anomaly:
    kind: str
    t_start: float  # mission seconds
    t_end: float  # mission seconds (inf: lasts beyond the run)
    row: int  # -1: all rows
    column: int  # -1: all columns (0 = SM, 1..9 = AF1..AF9)
    magnitude: float  # K for temperature, fractional LSF widening for focus, ADU for bias

    def as_row(self) -> dict:
        return asdict(self)


def plan_anomalies(seed: int, t_lo: float, t_hi: float, kinds: tuple[str, ...]) -> list[Anomaly]:
    """One anomaly of each requested kind per simulated day, at hashed times inside that day."""
    out = []
    for day in range(int(np.floor(t_lo / 86400.0)), int(np.ceil(t_hi / 86400.0))):
        d0 = max(day * 86400.0, t_lo)
        span = min((day + 1) * 86400.0, t_hi) - d0
        if span < 4 * 3600.0:
            continue
        for i, kind in enumerate(kinds):
            u = uniform(seed, day, 0xA0 + i)
            start = d0 + 3600.0 + float(u) * (span - 4 * 3600.0)
            row = int(uniform(seed, day, 0xB0 + i) * instrument.N_ROWS)
            if kind == "temperature_excursion":
                out.append(Anomaly(kind, start, start + 2 * 3600.0, row, -1, 3.0))
            elif kind == "focus_drift":
                out.append(Anomaly(kind, start, start + 3 * 3600.0, -1, -1, 0.4))
            elif kind == "bias_jump":
                column = 1 + int(uniform(seed, day, 0xC0 + i) * instrument.N_AF)
                out.append(Anomaly(kind, start, np.inf, row, column, 40.0))
            else:
                raise ValueError(f"unknown anomaly kind {kind!r}; known: {', '.join(ANOMALY_KINDS)}")
    return out


class Payload:
    """The payload's state as functions of mission time (vectorised), with anomalies applied."""

    def __init__(self, seed: int, anomalies: list[Anomaly]):
        self.seed = seed
        self.anomalies = list(anomalies)
        rc = np.arange(instrument.N_ROWS * instrument.N_CCD_COLUMNS)
        self.base_bias = instrument.NOMINAL_BIAS_ADU + 15.0 * (2.0 * uniform(seed, 0xB1A5, rc) - 1.0)
        self.base_bias = self.base_bias.reshape(instrument.N_ROWS, instrument.N_CCD_COLUMNS)

    def _of(self, kind: str) -> list[Anomaly]:
        return [a for a in self.anomalies if a.kind == kind]

    def temperature_excess(self, t: np.ndarray) -> np.ndarray:
        """Kelvin above nominal per row: (n, 7)."""
        t = np.atleast_1d(np.asarray(t, dtype=float))
        out = np.zeros((len(t), instrument.N_ROWS))
        for a in self._of("temperature_excursion"):
            up = np.clip((t - a.t_start) / RAMP_S, 0.0, 1.0)
            down = np.clip((a.t_end - t) / RAMP_S, 0.0, 1.0)
            rows = slice(None) if a.row < 0 else [a.row]
            out[:, rows] += (a.magnitude * np.minimum(up, down))[:, None]
        return out

    def fpa_temperature(self, t: np.ndarray) -> np.ndarray:
        t = np.atleast_1d(np.asarray(t, dtype=float))
        phase = 2.0 * np.pi * t[:, None] / instrument.SPIN_PERIOD_S + np.arange(instrument.N_ROWS) * 0.3
        return NOMINAL_FPA_K + 0.02 * np.sin(phase) + self.temperature_excess(t)

    def mirror_temperature(self, t: np.ndarray) -> np.ndarray:
        t = np.atleast_1d(np.asarray(t, dtype=float))
        phase = 2.0 * np.pi * t[:, None] / instrument.SPIN_PERIOD_S
        return np.asarray(NOMINAL_MIRROR_K) + 0.005 * np.sin(phase + np.array([0.0, 1.0]))

    def bias(self, t: np.ndarray) -> np.ndarray:
        """CCD bias levels (ADU): (n, 7, 10)."""
        t = np.atleast_1d(np.asarray(t, dtype=float))
        out = np.broadcast_to(self.base_bias, (len(t), *self.base_bias.shape)).copy()
        for a in self._of("bias_jump"):
            on = (t >= a.t_start) & (t < a.t_end)
            rows = slice(None) if a.row < 0 else a.row
            cols = slice(None) if a.column < 0 else a.column
            out[on, rows, cols] += a.magnitude
        return out

    def lsf_sigma(self, t: np.ndarray, row: np.ndarray) -> np.ndarray:
        """LSF width (AL pixels) at times t on rows row: focus drift grows linearly, then is corrected."""
        t = np.asarray(t, dtype=float)
        sigma = np.full(np.shape(t), instrument.NOMINAL_LSF_SIGMA_PX)
        for a in self._of("focus_drift"):
            grow = np.clip((t - a.t_start) / (a.t_end - a.t_start), 0.0, 1.0) * (t < a.t_end)
            hit = (np.asarray(row) == a.row) if a.row >= 0 else True
            sigma = sigma * (1.0 + a.magnitude * grow * hit)
        return sigma

    def dark_e(self, t: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Extra background (e- per AL sample) from a focal plane warmer than nominal."""
        t = np.atleast_1d(np.asarray(t, dtype=float))
        excess = self.temperature_excess(t)
        return DARK_E_PER_K * excess[np.arange(len(t)), np.asarray(row, dtype=np.int64)]

    # --- housekeeping as telemetered (with sensor noise) --------------------------------------------------
    def hk_thermal(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        k = np.round(t / HK_CADENCE_S).astype(np.int64)[:, None]
        temps = np.hstack([self.fpa_temperature(t), self.mirror_temperature(t)])
        return temps + 0.005 * normal(self.seed, 0x7E, k, np.arange(temps.shape[1]))

    def hk_bias(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        k = np.round(t / HK_CADENCE_S).astype(np.int64)[:, None, None]
        cells = np.arange(instrument.N_ROWS * instrument.N_CCD_COLUMNS).reshape(instrument.N_ROWS, -1)
        return self.bias(t) + 0.2 * normal(self.seed, 0xB5, k, cells)

    def hk_power(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        k = np.round(t / HK_CADENCE_S).astype(np.int64)[:, None]
        return NOMINAL_POWER * (1.0 + 0.002 * normal(self.seed, 0x90, k, np.arange(len(NOMINAL_POWER))))
