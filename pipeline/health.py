"""Payload health monitoring, per chunk of on-board time: housekeeping and science-data checks, and a report.

The pipeline cuts on-board time into fixed chunks (chunk_id = floor(obt / chunk_seconds)) and reduces each.
`monitor_chunk` runs on one chunk's decoded housekeeping and the image parameters of its star packets and
returns health events plus a summary row; `write_health_report` turns the events and summary rows of a day
into an HTML report with plots. Limits come from `pipeline/health_limits.yaml` (reasoning in that file and
in docs/health.md), overridable by a file of the user's.

Checks (event kinds):
    hk_missing / hk_coverage      no / few housekeeping samples of a kind in the chunk
    fpa_temperature               focal-plane row temperature off nominal (any sample)
    fpa_temperature_rate          focal-plane row temperature changing (least-squares slope, 5 samples)
    mirror_temperature            M1 / M2 temperature off nominal
    bias_level                    CCD bias off its reference level (any sample)
    bias_step                     CCD bias step between consecutive samples, and into the chunk from the
                                  last sample before it when its input has one (bias_before)
    power                         power-subsystem value off nominal (channel named in the detail)
    background                    a row's (column -1) or one CCD's fitted background above the focal plane
    background_common             the focal-plane background off the nominal sky
    lsf_width                     LSF width (estimate_lsf_width, 2-minute bins) off nominal: focus
    detections                    a (FoV, row) with far fewer star packets than the other rows of its FoV
    failed_fits / failed_transits fraction of failed window fits / of transits without a usable window

Science is pure numpy on arrays (the functions without a leading underscore below the limits section);
reading pass files (`monitor_passes`) and writing the report are the I/O edges. The helpers that group
decoded packets by chunk and reduce a chunk's star packets (`merge_decoded`, `split_by_chunk`,
`chunk_science`) live here for now.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import IntEnum
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from pipeline import instrument as ins
from pipeline.chunks import chunk_of
from pipeline.mission_time import iso, mission_of_obt
from pipeline.reduce.image_params import (
    FLAG_FAILED,
    FLAG_NO_GOOD_WINDOWS,
    FLAG_UNUSED,
    estimate_lsf_width,
    image_parameters,
    window_bias,
)
from pipeline.telemetry.layout import HK_POWER_NAMES

DEFAULT_CHUNK_SECONDS = 1800.0
HK_KINDS = ("hk_thermal", "hk_bias", "hk_power")
LIMITS_FILE = "health_limits.yaml"
MAD_TO_SIGMA = 1.4826
MEDIAN_EFFICIENCY = 1.2533  # standard error of a median / standard error of a mean, Gaussian data

# the event kinds an injected payload anomaly (pipeline.simulate.payload) should produce
ANOMALY_EVENT_KINDS = {
    "temperature_excursion": ("fpa_temperature", "fpa_temperature_rate"),
    "focus_drift": ("lsf_width",),
    "bias_jump": ("bias_step", "bias_level"),
}


class Severity(IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2
    CRITICAL = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value) -> Severity:
        if isinstance(value, Severity):
            return value
        return cls[str(value).upper()]


SEVERITY_NAMES = tuple(str(s) for s in Severity)


@dataclass(frozen=True)
class HealthEvent:
    """One finding of one check in one chunk.

    value is the graded quantity, signed (K, K/min, ADU, e-/sample, or a fraction: see docs/health.md),
    limit the threshold of the severity it passed; t_start_obt..t_end_obt spans the samples (or bins) beyond
    the lowest threshold, so t_start_obt is when the condition was first seen in the chunk.
    """

    chunk_id: int
    kind: str
    severity: Severity
    row: int  # focal-plane row 0..6, -1 when not applicable
    column: int  # CCD column 0 = SM, 1..9 = AF1..AF9, -1 when not applicable
    t_start_obt: float
    t_end_obt: float
    value: float
    limit: float
    detail: str

    def as_row(self) -> dict:
        d = asdict(self)
        d["severity"] = str(self.severity)
        return d


# --- limits ------------------------------------------------------------------------------------------------
def _is_threshold_table(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(k in SEVERITY_NAMES for k in d)


def _merge(base: dict, override: dict, where: str) -> dict:
    out = dict(base)
    for key, value in override.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in base:
            if key in SEVERITY_NAMES and _is_threshold_table(base):
                out[key] = value
                continue
            raise ValueError(f"unknown health limit {path!r}")
        if isinstance(base[key], dict) and not _is_threshold_table(base[key]):
            if not isinstance(value, dict):
                raise ValueError(f"health limit {path!r} must be a mapping")
            out[key] = _merge(base[key], value, path)
        elif _is_threshold_table(base[key]):
            if not isinstance(value, dict) or not all(k in SEVERITY_NAMES for k in value):
                raise ValueError(f"health limit {path!r} must map severities ({', '.join(SEVERITY_NAMES)})")
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    return out


def _validate(values: dict) -> None:
    def walk(d: dict, where: str):
        for k, v in d.items():
            path = f"{where}.{k}" if where else k
            if _is_threshold_table(v):
                seq = [float(v[s]) for s in SEVERITY_NAMES if v.get(s) is not None]
                lower_is_worse = path == "detections.fraction_of_expected"
                ok = all((b < a) if lower_is_worse else (b > a) for a, b in itertools.pairwise(seq))
                if not ok:
                    raise ValueError(
                        f"health limit {path!r}: thresholds must {'fall' if lower_is_worse else 'grow'}"
                        " with severity"
                    )
            elif isinstance(v, dict) and k != "nominal":
                walk(v, path)

    walk(values, "")
    ref = values["bias"]["reference_adu"]
    if ref is not None and np.shape(ref) != (ins.N_ROWS, ins.N_CCD_COLUMNS):
        raise ValueError(f"bias.reference_adu must be null or a {ins.N_ROWS}x{ins.N_CCD_COLUMNS} table")
    if len(values["mirror_temperature"]["nominal_k"]) != 2:
        raise ValueError("mirror_temperature.nominal_k must list M1 and M2")
    if tuple(values["power"]["nominal"]) != HK_POWER_NAMES:
        raise ValueError(f"power.nominal must list {', '.join(HK_POWER_NAMES)} in that order")


@dataclass(frozen=True)
class HealthLimits:
    """Limits of the health checks: the packaged defaults, optionally merged with a user file."""

    values: dict
    sources: tuple[str, ...]

    @classmethod
    def load(cls, path: str | Path | None = None) -> HealthLimits:
        """The defaults of pipeline/health_limits.yaml; with path, that YAML file merged over them (only the
        keys it gives change; an unknown key raises ValueError)."""
        values = yaml.safe_load(resources.files("pipeline").joinpath(LIMITS_FILE).read_text())
        sources = [f"pipeline/{LIMITS_FILE}"]
        if path is not None:
            override = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(override, dict):
                raise ValueError(f"{path}: health limits must be a YAML mapping")
            values = _merge(values, override, "")
            sources.append(str(path))
        _validate(values)
        return cls(values, tuple(sources))

    def __getitem__(self, section: str) -> dict:
        return self.values[section]

    def bias_reference(self) -> np.ndarray:
        """(7, 10) reference bias level of every CCD (ADU)."""
        b = self.values["bias"]
        if b["reference_adu"] is None:
            return np.full((ins.N_ROWS, ins.N_CCD_COLUMNS), float(b["nominal_adu"]))
        return np.asarray(b["reference_adu"], dtype=float)


def grade(value: float, table: Mapping, lower_is_worse: bool = False) -> tuple[Severity | None, float]:
    """(severity, threshold) of the highest severity in table whose threshold value passes, or (None, nan)."""
    sev, lim = None, float("nan")
    if value is None or not np.isfinite(value):
        return sev, lim
    for s in Severity:
        thr = table.get(str(s))
        if thr is None:
            continue
        if (value < thr) if lower_is_worse else (value > thr):
            sev, lim = s, float(thr)
    return sev, lim


def _lowest(table: Mapping) -> float:
    return float(next(table[s] for s in SEVERITY_NAMES if table.get(s) is not None))


# --- science: pure numpy ------------------------------------------------------------------------------------
def robust_median(values: np.ndarray) -> tuple[float, float, int]:
    """(median, its standard error from the MAD, count) of the finite values; NaNs when there are none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    med = float(np.median(v))
    err = MEDIAN_EFFICIENCY * MAD_TO_SIGMA * float(np.median(np.abs(v - med))) / np.sqrt(v.size)
    return med, err, int(v.size)


def sliding_slope(t: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares slopes of y (n, ...) against t (n,) over every run of k consecutive samples.

    Returns (slope (m, ...) per unit of t, t_first (m,), t_last (m,)), m = n - k + 1; with n < k one run of
    all n samples; m = 0 below 2 samples.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(t)
    if n < 2:
        return np.zeros((0, *y.shape[1:])), np.zeros(0), np.zeros(0)
    k = min(k, n)
    tw = np.lib.stride_tricks.sliding_window_view(t, k)  # (m, k)
    yw = np.moveaxis(np.lib.stride_tricks.sliding_window_view(y, k, axis=0), -1, 1)  # (m, k, ...)
    tc = tw - tw.mean(axis=1, keepdims=True)
    yc = yw - yw.mean(axis=1, keepdims=True)
    extra = (1,) * (y.ndim - 1)
    num = (tc.reshape(*tc.shape, *extra) * yc).sum(axis=1)
    den = (tc * tc).sum(axis=1).reshape(-1, *extra)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return slope, tw[:, 0], tw[:, -1]


def background_statistics(background, flags, flux, gate, row, max_flux_e: float) -> dict:
    """Robust background medians per row (AF CCDs pooled) and per CCD (row, AF column) from window fits.

    Windows used: flags == 0, gate == 0 (ungated background), fitted flux below max_flux_e. Returns row,
    row_err, row_n (7,), ccd, ccd_err, ccd_n (7, 9) and the used-window mask (n, 9).
    """
    background = np.asarray(background, dtype=float)
    with np.errstate(invalid="ignore"):
        use = (
            (np.asarray(flags) == 0)
            & (np.asarray(gate) == 0)[:, None]
            & (np.asarray(flux, dtype=float) < max_flux_e)
            & np.isfinite(background)
        )
    row = np.asarray(row, dtype=np.int64)
    out = {k: np.full(ins.N_ROWS, np.nan) for k in ("row", "row_err")}
    out["row_n"] = np.zeros(ins.N_ROWS, np.int64)
    for k in ("ccd", "ccd_err"):
        out[k] = np.full((ins.N_ROWS, ins.N_AF), np.nan)
    out["ccd_n"] = np.zeros((ins.N_ROWS, ins.N_AF), np.int64)
    for r in range(ins.N_ROWS):
        on = use & (row == r)[:, None]
        out["row"][r], out["row_err"][r], out["row_n"][r] = robust_median(background[on])
        for c in range(ins.N_AF):
            out["ccd"][r, c], out["ccd_err"][r, c], out["ccd_n"][r, c] = robust_median(
                background[on[:, c], c]
            )
    out["used"] = use
    return out


def binned_medians(t: np.ndarray, values: np.ndarray, t0: float, t1: float, bin_s: float) -> dict:
    """Robust medians of values (n, ...) in bins of t (n,) from t0 to t1: edges, median, err, n per bin."""
    nb = max(1, int(np.ceil((t1 - t0) / bin_s - 1e-9)))
    edges = t0 + bin_s * np.arange(nb + 1)
    edges[-1] = max(edges[-1], t1)
    v = np.asarray(values, dtype=float).reshape(len(t), -1)
    b = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, nb - 1)
    med, err, cnt = np.full(nb, np.nan), np.full(nb, np.nan), np.zeros(nb, np.int64)
    for i in range(nb):
        med[i], err[i], cnt[i] = robust_median(v[b == i])
    return {"edges": edges, "median": med, "err": err, "n": cnt}


def detection_counts(fov, row) -> np.ndarray:
    """Star packets per (FoV, row): (2, 7)."""
    fov = np.asarray(fov, dtype=np.int64)
    row = np.asarray(row, dtype=np.int64)
    ok = (fov >= 0) & (fov < ins.N_FOV) & (row >= 0) & (row < ins.N_ROWS)
    return np.bincount(fov[ok] * ins.N_ROWS + row[ok], minlength=ins.N_FOV * ins.N_ROWS).reshape(
        ins.N_FOV, ins.N_ROWS
    )


def expected_from_other_rows(counts: np.ndarray) -> np.ndarray:
    """Expected count of each (FoV, row): the mean count of the other rows of its FoV."""
    c = np.asarray(counts, dtype=float)
    return (c.sum(axis=1, keepdims=True) - c) / (c.shape[1] - 1)


# --- per-chunk monitor --------------------------------------------------------------------------------------
def _ccd_name(column: int) -> str:
    return "SM" if column == 0 else f"AF{column}"


class _Events:
    def __init__(self, chunk_id: int):
        self.chunk_id = int(chunk_id)
        self.items: list[HealthEvent] = []

    def add(self, kind, severity, *, row=-1, column=-1, span, value, limit, detail):
        t0, t1 = span
        self.items.append(
            HealthEvent(
                self.chunk_id,
                kind,
                Severity.parse(severity),
                int(row),
                int(column),
                float(t0),
                float(t1),
                float(value),
                float(limit),
                detail,
            )
        )

    def grade_worst(self, kind, series, table, t_start, t_end, detail, *, row=-1, column=-1, pick=np.argmax):
        """Grade the largest |value| of one time series against a threshold table; if it passes one, add an
        event spanning the samples beyond the lowest threshold. detail(i) words it from the worst sample i."""
        a = np.abs(series)
        i = int(pick(a))
        sev, thr = grade(a[i], table)
        if sev is not None:
            span = _span(a > _lowest(table), t_start, t_end)
            self.add(kind, sev, row=row, column=column, span=span, value=series[i], limit=thr,
                     detail=detail(i))  # fmt: skip


def _hk(hk: Mapping | None, kind: str, field: str) -> tuple[np.ndarray, np.ndarray] | None:
    d = (hk or {}).get(kind) or {}
    if "obt" not in d or len(d["obt"]) == 0:
        return None
    obt = np.asarray(d["obt"], dtype=float)
    o = np.argsort(obt, kind="stable")
    return obt[o], np.asarray(d[field], dtype=float)[o]


def _span(mask: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> tuple[float, float]:
    m = np.asarray(mask, bool)
    return float(t0[m].min()), float(t1[m].max())


def _check_hk_coverage(hk, limits, ev, summary, t0, t1):
    expected = (t1 - t0) / float(limits["hk"]["cadence_s"])
    for kind in HK_KINDS:
        d = (hk or {}).get(kind) or {}
        n = len(d.get("obt", []))
        summary[f"n_{kind}"] = n
        if n == 0:
            ev.add(
                "hk_missing",
                "warning",
                span=(t0, t1),
                value=0,
                limit=expected,
                detail=f"no {kind} samples in the chunk: its checks did not run",
            )
        elif n < float(limits["hk"]["min_coverage_fraction"]) * expected:
            ev.add(
                "hk_coverage",
                "info",
                span=(t0, t1),
                value=n,
                limit=expected,
                detail=f"{n} {kind} samples of {expected:.0f} expected (partial chunk or lost packets)",
            )


def _check_thermal(hk, limits, ev, summary):
    nan7 = np.full(ins.N_ROWS, np.nan)
    summary.update(
        fpa_temp_median=nan7.copy(),
        fpa_temp_min=nan7.copy(),
        fpa_temp_max=nan7.copy(),
        fpa_rate_max=nan7.copy(),
        mirror_temp_min=np.full(2, np.nan),
        mirror_temp_max=np.full(2, np.nan),
        mirror_temp_median=np.full(2, np.nan),
    )
    got = _hk(hk, "hk_thermal", "temps")
    if got is None:
        return
    obt, temps = got
    lim = limits["fpa_temperature"]
    nominal = float(lim["nominal_k"])
    fpa = temps[:, : ins.N_ROWS]
    summary["fpa_temp_median"] = np.median(fpa, axis=0)
    summary["fpa_temp_min"], summary["fpa_temp_max"] = fpa.min(axis=0), fpa.max(axis=0)
    dev = fpa - nominal
    dark = float(limits["background"]["dark_e_per_k"])
    for r in range(ins.N_ROWS):
        ev.grade_worst(
            "fpa_temperature", dev[:, r], lim["deviation_k"], obt, obt, row=r,
            detail=lambda i, r=r: f"row {r} at {fpa[i, r]:.3f} K, {dev[i, r]:+.3f} K from nominal "
            f"{nominal:.1f} K (dark signal {dark * dev[i, r]:+.2f} e-/sample)",
        )  # fmt: skip
    slope, ta, tb = sliding_slope(obt, fpa, int(lim["rate_fit_samples"]))
    if len(slope):
        rate = slope * 60.0
        summary["fpa_rate_max"] = np.nanmax(np.abs(rate), axis=0)
        n_fit = min(int(lim["rate_fit_samples"]), len(obt))
        for r in range(ins.N_ROWS):
            ev.grade_worst(
                "fpa_temperature_rate", rate[:, r], lim["rate_k_per_min"], ta, tb, row=r, pick=np.nanargmax,
                detail=lambda i, r=r: f"row {r} temperature changing at {rate[i, r]:+.3f} K/min "
                f"(slope over {n_fit} samples)",
            )  # fmt: skip
    mlim = limits["mirror_temperature"]
    mir = temps[:, ins.N_ROWS : ins.N_ROWS + 2]
    summary["mirror_temp_median"] = np.median(mir, axis=0)
    summary["mirror_temp_min"], summary["mirror_temp_max"] = mir.min(axis=0), mir.max(axis=0)
    mdev = mir - np.asarray(mlim["nominal_k"], dtype=float)
    for m in range(2):
        ev.grade_worst(
            "mirror_temperature", mdev[:, m], mlim["deviation_k"], obt, obt,
            detail=lambda i, m=m: f"mirror M{m + 1} at {mir[i, m]:.3f} K, {mdev[i, m]:+.3f} K from nominal "
            f"{mlim['nominal_k'][m]:.2f} K",
        )  # fmt: skip


def bias_before(hk_bias: Mapping | None, t0: float) -> dict | None:
    """The last bias sample before on-board time t0 ({"obt", "bias" (7, 10)}), from decoded bias housekeeping
    (a chunk's input holds the context packets around it: pipeline.chunks.CONTEXT_MARGIN_S); None if none."""
    if not hk_bias or not len(hk_bias.get("obt", ())):
        return None
    obt = np.asarray(hk_bias["obt"], dtype=float)
    before = np.flatnonzero(obt < t0)
    if not len(before):
        return None
    i = before[np.argmax(obt[before])]
    return {"obt": float(obt[i]), "bias": np.asarray(hk_bias["bias"], dtype=float)[i]}


def _check_bias(hk, limits, ev, summary, before):
    shape = (ins.N_ROWS, ins.N_CCD_COLUMNS)
    summary.update(
        bias_median=np.full(shape, np.nan),
        bias_last=np.full(shape, np.nan),
        bias_last_obt=np.nan,
        bias_max_step=np.full(shape, np.nan),
    )
    got = _hk(hk, "hk_bias", "bias")
    if got is None:
        return
    obt, bias = got
    lim = limits["bias"]
    ref = limits.bias_reference()
    summary["bias_median"] = np.median(bias, axis=0)
    summary["bias_last"], summary["bias_last_obt"] = bias[-1].copy(), float(obt[-1])
    dev = bias - ref
    for r, c in np.ndindex(*shape):
        ev.grade_worst(
            "bias_level", dev[:, r, c], lim["level_deviation_adu"], obt, obt, row=r, column=c,
            detail=lambda i, r=r, c=c: f"row {r} {_ccd_name(c)} bias at {bias[i, r, c]:.1f} ADU, "
            f"{dev[i, r, c]:+.1f} ADU from its reference {ref[r, c]:.1f} ADU",
        )  # fmt: skip
    # steps, including the one into this chunk from the last sample before it (a function of the chunk's
    # input alone: the same input gives the same events, whichever chunks were reduced before)
    t_all, b_all = obt, bias
    if before is not None and before["obt"] < obt[0] and np.all(np.isfinite(before["bias"])):
        t_all = np.r_[before["obt"], obt]
        b_all = np.concatenate([before["bias"][None], bias])
    if len(t_all) < 2:
        return
    step = np.diff(b_all, axis=0)
    summary["bias_max_step"] = np.abs(step).max(axis=0)
    worst = np.argmax(np.abs(step), axis=0)
    lowest = _lowest(lim["step_adu"])
    for r, c in np.ndindex(*shape):
        i = int(worst[r, c])
        sev, thr = grade(abs(step[i, r, c]), lim["step_adu"])
        if sev is not None:
            t0, t1 = _span(np.abs(step[:, r, c]) > lowest, t_all[:-1], t_all[1:])
            ev.add(
                "bias_step",
                sev,
                row=r,
                column=c,
                span=(t_all[i], t_all[i + 1]),
                value=step[i, r, c],
                limit=thr,
                detail=(
                    f"row {r} {_ccd_name(c)} bias stepped by {step[i, r, c]:+.1f} ADU "
                    f"({b_all[i, r, c]:.1f} -> {b_all[i + 1, r, c]:.1f} ADU) between OBT {t_all[i]:.0f} and "
                    f"{t_all[i + 1]:.0f}; steps above {lowest:g} ADU from {t0:.0f} to {t1:.0f}"
                ),
            )


def _check_power(hk, limits, ev, summary):
    summary["power_median"] = np.full(len(HK_POWER_NAMES), np.nan)
    got = _hk(hk, "hk_power", "values")
    if got is None:
        return
    obt, values = got
    lim = limits["power"]
    nominal = np.array([float(lim["nominal"][k]) for k in HK_POWER_NAMES])
    summary["power_median"] = np.median(values, axis=0)
    rel = values / nominal - 1.0
    for j, name in enumerate(HK_POWER_NAMES):
        ev.grade_worst(
            "power", rel[:, j], lim["deviation_fraction"], obt, obt,
            detail=lambda i, j=j, name=name: f"{name} at {values[i, j]:.3f}, {100 * rel[i, j]:+.2f} % from "
            f"nominal {nominal[j]:g}",
        )  # fmt: skip


def _check_background(windows, transits, limits, ev, summary, t_chunk):
    lim = limits["background"]
    summary.update(
        background_row=np.full(ins.N_ROWS, np.nan),
        background_row_err=np.full(ins.N_ROWS, np.nan),
        background_row_n=np.zeros(ins.N_ROWS, np.int64),
        background_ccd=np.full((ins.N_ROWS, ins.N_AF), np.nan),
        background_ccd_n=np.zeros((ins.N_ROWS, ins.N_AF), np.int64),
        background_fp=np.nan,
        background_fp_err=np.nan,
    )
    if not windows or "background" not in windows or not transits or len(transits.get("row", [])) == 0:
        return
    st = background_statistics(
        windows["background"],
        windows["flags"],
        windows["flux"],
        windows["gate"],
        transits["row"],
        float(lim["max_flux_e"]),
    )
    summary.update(
        background_row=st["row"],
        background_row_err=st["row_err"],
        background_row_n=st["row_n"],
        background_ccd=st["ccd"],
        background_ccd_n=st["ccd_n"],
    )
    nmin = int(lim["min_windows"])
    ok_rows = st["row_n"] >= nmin
    if ok_rows.sum() < 3:
        return
    base = float(np.median(st["row"][ok_rows]))
    base_err = MEDIAN_EFFICIENCY * float(np.median(st["row_err"][ok_rows])) / np.sqrt(ok_rows.sum())
    summary["background_fp"], summary["background_fp_err"] = base, base_err
    obt = np.asarray(transits["obt"], dtype=float)
    row = np.asarray(transits["row"], dtype=np.int64)
    used_any = st["used"].any(axis=1)
    t_lo, t_hi = (float(obt[used_any].min()), float(obt[used_any].max())) if used_any.any() else t_chunk
    nominal, per_k, zmin = (
        float(lim["nominal_e_per_sample"]),
        float(lim["dark_e_per_k"]),
        float(lim["min_significance"]),
    )
    hk_dev = summary.get("fpa_temp_max", np.full(ins.N_ROWS, np.nan)) - float(
        limits["fpa_temperature"]["nominal_k"]
    )
    lnom = float(limits["lsf"]["nominal_sigma_px"])
    lsf_rel = abs(summary.get("lsf_median", np.nan) / lnom - 1.0)
    lsf_off = bool(np.isfinite(lsf_rel) and lsf_rel > _lowest(limits["lsf"]["relative_deviation"]))

    def add(kind, sev, *, detail, **kw):
        if lsf_off:  # the fits used the nominal LSF: their background absorbs the mismatch, row by row
            sev = min(sev, Severity.INFO)
            detail += (
                f"; capped at info: the fits used the nominal LSF while the chunk's LSF median is "
                f"{summary['lsf_median']:.3f} px ({100 * lsf_rel:.1f} % off), see lsf_width"
            )
        ev.add(kind, sev, detail=detail, **kw)

    flagged_rows = set()
    for r in np.flatnonzero(ok_rows):
        x = st["row"][r] - base
        z = abs(x) / max(np.hypot(st["row_err"][r], base_err), 1e-9)
        sev, thr = grade(abs(x), lim["excess_e"])
        if sev is None or z < zmin:
            continue
        flagged_rows.add(int(r))
        m = row == r
        add(
            "background",
            sev,
            row=r,
            span=(obt[m].min(), obt[m].max()),
            value=x,
            limit=thr,
            detail=(
                f"row {r} median background {st['row'][r]:.2f} e-/sample over {st['row_n'][r]} windows, "
                f"{x:+.2f} "
                f"above the focal-plane median {base:.2f} ({z:.0f} sigma; as dark signal {x / per_k:+.2f} K; "
                f"HK row temperature up to {hk_dev[r]:+.2f} K)"
            ),
        )
    for r, c in np.ndindex(ins.N_ROWS, ins.N_AF):
        if r in flagged_rows or st["ccd_n"][r, c] < nmin:
            continue
        x = st["ccd"][r, c] - base
        # the per-window scatter from the whole row: a MAD of a few tens of windows can come out small
        err = max(st["ccd_err"][r, c], st["row_err"][r] * np.sqrt(st["row_n"][r] / st["ccd_n"][r, c]))
        z = abs(x) / max(np.hypot(err, base_err), 1e-9)
        sev, thr = grade(abs(x), lim["excess_e"])
        if sev is not None and z >= zmin:
            add(
                "background",
                sev,
                row=r,
                column=c + 1,
                span=(t_lo, t_hi),
                value=x,
                limit=thr,
                detail=(
                    f"row {r} AF{c + 1} median background {st['ccd'][r, c]:.2f} e-/sample over "
                    f"{st['ccd_n'][r, c]} windows, {x:+.2f} above the focal-plane median {base:.2f} "
                    f"({z:.0f} sigma)"
                ),
            )
    x = base - nominal
    sev, thr = grade(abs(x), lim["common_excess_e"])
    if sev is not None and abs(x) / max(base_err, 1e-9) >= zmin:
        add(
            "background_common",
            sev,
            span=(t_lo, t_hi),
            value=x,
            limit=thr,
            detail=(
                f"focal-plane median background {base:.2f} e-/sample, {x:+.2f} from the nominal sky "
                f"{nominal:g} "
                f"(all rows: a Galactic-plane sky, a warm focal plane, or fits with a wrong LSF width; "
                f"LSF median "
                f"{summary.get('lsf_median', np.nan):.3f} px)"
            ),
        )


def _check_lsf(windows, transits, limits, ev, summary, t0, t1):
    lim = limits["lsf"]
    summary.update(lsf_median=np.nan, lsf_median_err=np.nan, lsf_n=0, lsf_worst_bin=np.nan)
    if not windows or "lsf_width" not in windows or not transits or len(transits.get("obt", [])) == 0:
        return
    width = np.asarray(windows["lsf_width"], dtype=float)
    obt = np.asarray(transits["obt"], dtype=float)
    t_win = obt[:, None] + np.arange(ins.N_AF) * ins.CCD_CROSSING_S
    summary["lsf_median"], summary["lsf_median_err"], summary["lsf_n"] = robust_median(width)
    b = binned_medians(t_win.ravel(), width.ravel(), t0, t1, float(lim["bin_seconds"]))
    nominal = float(lim["nominal_sigma_px"])
    rel = (b["median"] - nominal) / nominal
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(b["median"] - nominal) / np.maximum(b["err"], 1e-12)
    ok = (b["n"] >= int(lim["min_windows"])) & np.isfinite(rel)
    if not ok.any():
        return
    i = int(np.flatnonzero(ok)[np.argmax(np.abs(rel[ok]))])
    summary["lsf_worst_bin"] = float(b["median"][i])
    sev, thr = grade(abs(rel[i]), lim["relative_deviation"])
    if sev is None or z[i] < float(lim["min_significance"]):
        return
    hit = ok & (np.abs(rel) > _lowest(lim["relative_deviation"])) & (z >= float(lim["min_significance"]))
    first = int(np.flatnonzero(hit)[0])
    ev.add(
        "lsf_width",
        sev,
        span=(b["edges"][first], b["edges"][i + 1]),
        value=rel[i],
        limit=thr,
        detail=(
            f"LSF sigma {b['median'][i]:.4f} px ({100 * rel[i]:+.2f} % from nominal {nominal:g} px, "
            f"{b['n'][i]} windows) in the {lim['bin_seconds']:g}-s bin from OBT {b['edges'][i]:.0f}; "
            f"first bin "
            f"above {100 * _lowest(lim['relative_deviation']):g} % from OBT {b['edges'][first]:.0f}; chunk "
            f"median {summary['lsf_median']:.4f} px"
        ),
    )


def _check_detections(transits, limits, ev, summary, t0, t1):
    lim = limits["detections"]
    counts = np.zeros((ins.N_FOV, ins.N_ROWS), np.int64)
    if transits and len(transits.get("row", [])):
        counts = detection_counts(transits["fov"], transits["row"])
    summary["detections"] = counts
    summary["n_transits"] = int(counts.sum())
    expected = expected_from_other_rows(counts)
    for f, r in np.ndindex(*counts.shape):
        e = expected[f, r]
        if e < float(lim["min_expected"]):
            continue
        frac = counts[f, r] / e
        z = (e - counts[f, r]) / np.sqrt(e)
        sev, thr = grade(frac, lim["fraction_of_expected"], lower_is_worse=True)
        if sev is not None and z >= float(lim["min_significance"]):
            ev.add(
                "detections",
                sev,
                row=r,
                span=(t0, t1),
                value=frac,
                limit=thr,
                detail=(
                    f"FoV {f} row {r}: {counts[f, r]} star packets, {e:.0f} expected from the other rows "
                    f"of the "
                    f"FoV ({frac:.2f} of expected, {z:.0f} sigma)"
                ),
            )


def _check_fits(windows, transits, limits, ev, summary, t0, t1):
    lim = limits["fits"]
    summary.update(n_windows=0, failed_fraction=np.nan, failed_transit_fraction=np.nan)
    if not windows or "flags" not in windows:
        return
    flags = np.asarray(windows["flags"], dtype=np.int64)
    present = (flags & FLAG_UNUSED) == 0
    n = int(present.sum())
    summary["n_windows"] = n
    if n == 0:
        return
    failed = int((present & ((flags & FLAG_FAILED) != 0)).sum())
    summary["failed_fraction"] = failed / n
    tflags = np.asarray((transits or {}).get("flags", np.zeros(0)), dtype=np.int64)
    nt = len(tflags)
    bad_t = int(((tflags & FLAG_NO_GOOD_WINDOWS) != 0).sum())
    if nt:
        summary["failed_transit_fraction"] = bad_t / nt
    for kind, k, total, what in (
        ("failed_fits", failed, n, "window fits"),
        ("failed_transits", bad_t, nt, "transits"),
    ):
        if total < int(lim["min_windows"]) / (1 if kind == "failed_fits" else ins.N_AF):
            continue
        sev, thr = grade(k / total, lim["failed_fraction"])
        if sev is not None:
            ev.add(
                kind,
                sev,
                span=(t0, t1),
                value=k / total,
                limit=thr,
                detail=f"{k} of {total} {what} failed ({100 * k / total:.2f} %)",
            )


def monitor_chunk(
    chunk_id: int,
    hk: Mapping | None,
    windows: Mapping | None,
    transits: Mapping | None,
    limits: HealthLimits | None = None,
    *,
    before: Mapping | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
) -> tuple[list[HealthEvent], dict]:
    """Health checks of one chunk -> (events, summary row).

    hk: {"hk_thermal": {obt, temps (n, 9)}, "hk_bias": {obt, bias (n, 7, 10)}, "hk_power": {obt, values
    (n, 8)}}, the chunk's decoded housekeeping (decode_pass dicts; a kind may be missing or empty).
    windows: fit_windows output for the chunk's star packets (background, flags, flux, gate (n,) ...), plus
    optionally "lsf_width" (n, 9): estimate_lsf_width(...)["sigma"] (NaN where not used); without it the
    LSF check does not run. transits: combine_transit output (flags) plus the star packets' "obt", "fov",
    "row" (n,). chunk_science() builds both from decoded star packets. before: the last bias sample before
    the chunk (bias_before), for the step across the boundary. The summary row holds the per-chunk
    statistics that write_health_report plots.
    """
    limits = limits or HealthLimits.load()
    t0, t1 = chunk_id * chunk_seconds, (chunk_id + 1) * chunk_seconds
    ev = _Events(chunk_id)
    summary: dict = {"chunk_id": int(chunk_id), "t_start_obt": t0, "t_end_obt": t1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _check_hk_coverage(hk, limits, ev, summary, t0, t1)
        _check_thermal(hk, limits, ev, summary)
        _check_bias(hk, limits, ev, summary, before)
        _check_power(hk, limits, ev, summary)
        _check_lsf(windows, transits, limits, ev, summary, t0, t1)
        _check_background(windows, transits, limits, ev, summary, (t0, t1))
        _check_detections(transits, limits, ev, summary, t0, t1)
        _check_fits(windows, transits, limits, ev, summary, t0, t1)
    summary["events"] = {str(s): sum(e.severity == s for e in ev.items) for s in Severity}
    return ev.items, summary


# --- decoded packets -> chunks (helpers; to move where the pipeline's chunk reduction lives) ----------------
def merge_decoded(decoded: Iterable) -> dict[str, dict[str, np.ndarray]]:
    """Star and HK packet dicts of several decoded passes (DecodedPass or mappings with the same keys) merged:
    sorted by OBT, duplicates (same APID, sequence count and OBT: repeated deliveries) dropped."""
    decoded = list(decoded)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in ("star", *HK_KINDS):
        parts = [d[key] if isinstance(d, Mapping) else getattr(d, key) for d in decoded]
        parts = [p for p in parts if p and len(p.get("obt", []))]
        if not parts:
            out[key] = {}
            continue
        cat = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0] if k != "packet"}
        apid = cat.get("apid", np.zeros(len(cat["obt"]), np.int64)).astype(np.int64)
        seq = cat.get("seq", np.zeros(len(cat["obt"]), np.int64)).astype(np.int64)
        order = np.lexsort((seq, apid, cat["obt"]))
        o, a, s = cat["obt"][order], apid[order], seq[order]
        keep = np.r_[True, (o[1:] != o[:-1]) | (a[1:] != a[:-1]) | (s[1:] != s[:-1])]
        out[key] = {k: v[order][keep] for k, v in cat.items()}
    return out


def split_by_chunk(packets: Mapping[str, Mapping], chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> dict:
    """{kind: packet dict} -> {chunk_id: {kind: that chunk's packets}}, chunk_id = floor(obt / chunk_s)."""
    chunks: dict[int, dict] = {}
    for kind, d in packets.items():
        if not d or not len(d.get("obt", [])):
            continue
        cid = chunk_of(d["obt"], chunk_seconds)
        for c in np.unique(cid):
            m = cid == c
            chunks.setdefault(int(c), {})[kind] = {k: np.asarray(v)[m] for k, v in d.items()}
    return dict(sorted(chunks.items()))


def chunk_science(star: Mapping | None, hk_bias: Mapping | None, lsf: bool = True) -> tuple[dict, dict]:
    """(windows, transits) for monitor_chunk from one chunk's decoded star packets.

    hk_bias: the HK_BIAS samples available ({obt, bias}; give those before the chunk too, so that windows at
    its start get their bias). Runs image_parameters with window_bias and, with lsf, estimate_lsf_width on
    the fits; returns empty dicts when there are no star packets or no bias samples.
    """
    if not star or not len(star.get("obt", [])) or not hk_bias or not len(hk_bias.get("obt", [])):
        return {}, {}
    bias = window_bias(hk_bias["obt"], hk_bias["bias"], star)
    ip = image_parameters(star, bias)
    windows, transits = dict(ip["windows"]), dict(ip["transits"])
    transits.update(
        obt=np.asarray(star["obt"], dtype=float), fov=np.asarray(star["fov"]), row=np.asarray(star["row"])
    )
    if lsf:
        windows["lsf_width"] = estimate_lsf_width(
            star["samples"], star["n_samples"], bias, star["gate"], fit=ip["windows"]
        )["sigma"]
    return windows, transits


def monitor_packets(
    packets: Mapping[str, Mapping],
    limits: HealthLimits | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
) -> tuple[list[HealthEvent], list[dict]]:
    """Monitor every chunk of merged decoded packets (merge_decoded) -> (events, summary rows by chunk)."""
    limits = limits or HealthLimits.load()
    events: list[HealthEvent] = []
    series: list[dict] = []
    for cid, parts in split_by_chunk(packets, chunk_seconds).items():
        windows, transits = chunk_science(parts.get("star"), packets.get("hk_bias"))
        hk = {k: parts.get(k, {}) for k in HK_KINDS}
        before = bias_before(packets.get("hk_bias"), cid * chunk_seconds)
        ev, row = monitor_chunk(
            cid, hk, windows, transits, limits, before=before, chunk_seconds=chunk_seconds
        )
        events.extend(ev)
        series.append(row)
    return events, series


def monitor_passes(
    paths: Iterable, limits: HealthLimits | None = None, chunk_seconds: float = DEFAULT_CHUNK_SECONDS
) -> tuple[list[HealthEvent], list[dict]]:
    """Read and decode pass files (read_pass, decode_pass), then monitor_packets."""
    from pipeline.telemetry.decode import decode_pass
    from pipeline.telemetry.passfile import read_pass

    decoded = [decode_pass(read_pass(p)[1]) for p in paths]
    return monitor_packets(merge_decoded(decoded), limits, chunk_seconds)


# --- report -------------------------------------------------------------------------------------------------
_SEVERITY_COLOURS = {"info": "#dbe9f6", "warning": "#fff3c4", "error": "#f9d0b4", "critical": "#f4a3a3"}


def _stack(series: list[dict], key: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.array(
        [np.asarray(s.get(key, np.full(shape, np.nan)), dtype=float).reshape(shape) for s in series]
    )


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _limit_lines(ax, centre: float, table: Mapping, scale: float = 1.0, both: bool = True):
    for name, style in (("warning", ":"), ("error", "--"), ("critical", "-.")):
        thr = table.get(name)
        if thr is None:
            continue
        ax.axhline(centre + scale * thr, color="grey", ls=style, lw=0.8, label=f"{name} limit")
        if both:
            ax.axhline(centre - scale * thr, color="grey", ls=style, lw=0.8)


def _figures(series: list[dict], limits: HealthLimits) -> list[tuple[str, str, str]]:
    from matplotlib.figure import Figure

    t0 = np.array([s["t_start_obt"] for s in series])
    hours = (t0 - t0[0]) / 3600.0
    origin = iso(mission_of_obt(t0[0]))[:19]
    xlabel = f"hours since {origin} UTC (chunk start)"
    rows = range(ins.N_ROWS)
    out = []

    def fig(n=1, h=3.2):
        f = Figure(figsize=(10, h * n))
        axs = f.subplots(n, 1, squeeze=False)[:, 0]
        return f, axs

    # focal-plane temperatures
    lim = limits["fpa_temperature"]
    nom = float(lim["nominal_k"])
    tmin, tmax = _stack(series, "fpa_temp_min", (7,)) - nom, _stack(series, "fpa_temp_max", (7,)) - nom
    f, (ax,) = fig(h=4)
    for r in rows:
        ax.fill_between(hours, tmin[:, r], tmax[:, r], step="post", alpha=0.35, label=f"row {r}")
    _limit_lines(ax, 0.0, lim["deviation_k"])
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylabel(f"T - {nom:g} K (min..max per chunk)")
    ax.set_xlabel(xlabel)
    ax.legend(ncol=5, fontsize=7)
    out.append(("Focal-plane temperature per row", "fpa_temperature", _png(f)))

    # mirrors
    mlim = limits["mirror_temperature"]
    mn = np.asarray(mlim["nominal_k"], dtype=float)
    mlo, mhi = _stack(series, "mirror_temp_min", (2,)) - mn, _stack(series, "mirror_temp_max", (2,)) - mn
    f, (ax,) = fig(h=2.6)
    for m in range(2):
        ax.fill_between(hours, mlo[:, m], mhi[:, m], step="post", alpha=0.4, label=f"M{m + 1}")
    _limit_lines(ax, 0.0, {"warning": mlim["deviation_k"]["warning"]})
    ax.set_ylabel("T - nominal (K)")
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7)
    out.append(("Mirror temperatures", "mirror_temperature", _png(f)))

    # bias per CCD: deviation from the reference, and the largest step
    ref = limits.bias_reference()
    dev = _stack(series, "bias_median", (7, 10)) - ref
    step = _stack(series, "bias_max_step", (7, 10))
    f, (ax1, ax2) = fig(2, h=3.2)
    blim = limits["bias"]
    vmax = float(blim["level_deviation_adu"]["error"]) * 1.5
    for ax, data, label, kw in (
        (ax1, dev, "median bias - reference (ADU)", {"cmap": "RdBu_r", "vmin": -vmax, "vmax": vmax}),
        (ax2, step, "largest step between samples (ADU)", {"cmap": "magma_r", "vmin": 0, "vmax": 50}),
    ):
        im = ax.imshow(
            data.reshape(len(series), -1).T,
            aspect="auto",
            interpolation="nearest",
            extent=(hours[0], hours[-1] + (t0[1] - t0[0] if len(t0) > 1 else 1800) / 3600, 69.5, -0.5),
            **kw,
        )
        f.colorbar(im, ax=ax, label=label)
        ax.set_yticks(np.arange(ins.N_ROWS) * 10 + 4.5, [f"row {r}" for r in rows])
        for r in range(1, ins.N_ROWS):
            ax.axhline(r * 10 - 0.5, color="k", lw=0.4)
        ax.set_ylabel("CCD: per row SM, AF1..AF9")
    ax2.set_xlabel(xlabel)
    out.append(("CCD bias per CCD", "bias", _png(f)))

    # LSF width
    llim = limits["lsf"]
    lnom = float(llim["nominal_sigma_px"])
    f, (ax,) = fig(h=3)
    ax.plot(hours, [s.get("lsf_median", np.nan) for s in series], "o-", ms=3, label="chunk median")
    ax.plot(
        hours,
        [s.get("lsf_worst_bin", np.nan) for s in series],
        "x",
        ms=4,
        label=f"most deviant {llim['bin_seconds']:g}-s bin",
    )
    ax.axhline(lnom, color="k", lw=0.8)
    _limit_lines(ax, lnom, llim["relative_deviation"], scale=lnom)
    ax.set_ylabel("LSF sigma (px)")
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7, ncol=3)
    out.append(("LSF width", "lsf_width", _png(f)))

    # background
    bl = limits["background"]
    bg = _stack(series, "background_row", (7,))
    f, (ax,) = fig(h=3.5)
    for r in rows:
        ax.plot(hours, bg[:, r], ".-", ms=3, lw=0.8, label=f"row {r}")
    ax.plot(hours, [s.get("background_fp", np.nan) for s in series], "k-", lw=1.5, label="focal plane")
    ax.axhline(float(bl["nominal_e_per_sample"]), color="k", ls=":", lw=0.8, label="nominal sky")
    ax.set_ylabel("median fitted background (e-/sample)")
    ax.set_xlabel(xlabel)
    ax.legend(ncol=5, fontsize=7)
    out.append(("Background per row (faint gate-0 windows)", "background", _png(f)))

    # detections
    det = _stack(series, "detections", (2, 7))
    f, axs = fig(2, h=2.6)
    for fv, ax in enumerate(axs):
        for r in rows:
            ax.plot(hours, det[:, fv, r], ".-", ms=3, lw=0.8, label=f"row {r}")
        ax.set_ylabel(f"FoV {fv} star packets")
    axs[0].legend(ncol=7, fontsize=7, loc="upper left", bbox_to_anchor=(0, 1.25))
    axs[-1].set_xlabel(xlabel)
    out.append(("Detections per FoV and row", "detections", _png(f)))

    # power and fits
    pn = np.array([float(limits["power"]["nominal"][k]) for k in HK_POWER_NAMES])
    pw = 100 * (_stack(series, "power_median", (8,)) / pn - 1)
    f, (ax1, ax2) = fig(2, h=2.6)
    for j, name in enumerate(HK_POWER_NAMES):
        ax1.plot(hours, pw[:, j], ".-", ms=3, lw=0.8, label=name)
    _limit_lines(ax1, 0.0, {"warning": limits["power"]["deviation_fraction"]["warning"]}, scale=100)
    ax1.set_ylabel("power median - nominal (%)")
    ax1.legend(ncol=5, fontsize=7)
    ax2.plot(hours, [100 * s.get("failed_fraction", np.nan) for s in series], "o-", ms=3, label="windows")
    ax2.plot(
        hours,
        [100 * s.get("failed_transit_fraction", np.nan) for s in series],
        "x-",
        ms=3,
        label="transits without a usable window",
    )
    ax2.axhline(100 * float(limits["fits"]["failed_fraction"]["warning"]), color="grey", ls=":", lw=0.8)
    ax2.set_ylabel("failed fits (%)")
    ax2.set_xlabel(xlabel)
    ax2.legend(fontsize=7)
    out.append(("Power values and failed fits", "power_fits", _png(f)))
    return out


def _timeline(events: list[HealthEvent], series: list[dict]) -> str:
    from matplotlib.figure import Figure

    t_first = series[0]["t_start_obt"]
    kinds = sorted({e.kind for e in events})
    f = Figure(figsize=(10, 0.9 + 0.3 * max(len(kinds), 1)))
    ax = f.subplots()
    colours = {"info": "tab:blue", "warning": "gold", "error": "tab:orange", "critical": "tab:red"}
    for s in Severity:
        sel = [e for e in events if e.severity == s]
        if sel:
            ax.scatter(
                [(e.t_start_obt - t_first) / 3600 for e in sel],
                [kinds.index(e.kind) for e in sel],
                c=colours[str(s)],
                s=18,
                label=str(s),
                edgecolors="k",
                linewidths=0.3,
            )
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlim(0, (series[-1]["t_end_obt"] - t_first) / 3600)
    ax.set_xlabel("hours since the first chunk's start")
    if events:
        ax.legend(fontsize=7, ncol=4, loc="lower left", bbox_to_anchor=(0, 1.0))
    return _png(f)


def write_health_report(
    events: list[HealthEvent],
    series: list[dict],
    path: str | Path,
    limits: HealthLimits | None = None,
    title: str = "Payload health",
) -> Path:
    """Write a self-contained HTML report (PNG plots embedded) of a day's events and per-chunk summaries."""
    limits = limits or HealthLimits.load()
    series = sorted(series, key=lambda s: s["chunk_id"])
    path = Path(path)
    counts = {str(s): sum(e.severity == s for e in events) for s in Severity}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:1.5em;max-width:1100px}}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;"
        "vertical-align:top}th{background:#eee}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if series:
        first, last = series[0], series[-1]
        parts.append(
            f"<p>{len(series)} chunks, {first['chunk_id']}..{last['chunk_id']}: "
            f"{iso(mission_of_obt(first['t_start_obt']))[:19]} to "
            f"{iso(mission_of_obt(last['t_end_obt']))[:19]} UTC. "
            f"Limits: {html.escape(', '.join(limits.sources))}.</p>"
        )
    parts.append(
        "<p>Events: " + ", ".join(f"<b>{counts[s]}</b> {s}" for s in reversed(SEVERITY_NAMES)) + "</p>"
    )
    if series:
        parts.append(
            f"<h2>Events over the day</h2><img alt='timeline' src='data:image/png;base64,"
            f"{_timeline(events, series)}'>"
        )
        for caption, name, png in _figures(series, limits):
            parts.append(
                f"<h2>{html.escape(caption)}</h2><img alt='{name}' src='data:image/png;base64,{png}'>"
            )
    parts.append("<h2>Events by severity</h2>")
    if events:
        parts.append(
            "<table><tr><th>severity</th><th>chunk</th><th>start (UTC)</th><th>end (UTC)</th><th>kind</th>"
            "<th>row</th><th>column</th><th>value</th><th>limit</th><th>detail</th></tr>"
        )
        for e in sorted(events, key=lambda e: (-int(e.severity), e.t_start_obt, e.kind, e.row, e.column)):
            sev = str(e.severity)
            parts.append(
                f"<tr style='background:{_SEVERITY_COLOURS[sev]}'><td>{sev}</td><td>{e.chunk_id}</td>"
                f"<td>{iso(mission_of_obt(e.t_start_obt))[:19]}</td><td>{iso(mission_of_obt(e.t_end_obt))[:19]}</td>"
                f"<td>{e.kind}</td><td>{e.row}</td><td>{e.column}</td><td>{e.value:.4g}</td><td>{e.limit:.4g}</td>"
                f"<td>{html.escape(e.detail)}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>No events.</p>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
