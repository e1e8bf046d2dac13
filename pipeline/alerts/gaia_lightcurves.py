"""Loaders of the real Gaia Science Alerts data: per-alert light curves and the alerts index.

The data (ESA/Gaia/DPAC, Gaia Science Alerts team; CC BY-SA 3.0 IGO) lives beside the checkout in
`<repo>/../shared/data/gaia-alerts/` (environment variable SOC_GAIA_ALERTS_DIR overrides); its README.md
describes the files. Parsing is strict: a broken row (a bad date, a bad number, a wrong number of
columns, a JD that disagrees with its date) raises GaiaDataError naming the file and the line, never a
silently dropped row.

From a light curve to a History (`lightcurve_history`):
- g_mag: the `averagemag` column; `null` (no usable measurement) and `untrusted` (flagged) rows are kept as
  transits with a missing magnitude (NaN), so they still count as visits of the source.
- g_mag_err: the files have no errors; the Hodgkin et al. (2021) per-transit model at the magnitude is
  used (the same model the detectors use as their floor).
- near-duplicate rows (timestamps less than DUPLICATE_S = 60 s apart: the same passage reported twice, as
  in Gaia18buo and Gaia18aay, where the second copy is `null`) are one transit: the first row with a
  magnitude (or the first row) is kept.
- fov: the files do not say which telescope saw a transit. Gaia's preceding field of view (fov 0) sees a
  source 106.5 min (BASIC_ANGLE_S, the basic angle over the spin rate) before the following one (fov 1),
  and each telescope again one spin period (6 h) later. Within a visit, a transit whose delay after the
  visit's first transit is within FOV_TOLERANCE_S of a whole number of spins saw the same telescope as the
  first; any other transit saw the other one. The first transit is fov 0 unless the first transit of the
  other telescope comes SPIN - 106.5 min (253.5 min) after it, which makes the first one the following
  telescope. A visit of one transit, or of transits of one telescope only, gets fov 0 (undecidable).
- visit: the transits one daily run of the Gaia alert pipeline sees together (`visits_of`): a visit
  starts at the first transit after the previous visit and holds every transit within VISIT_S = 1 day of
  that start (a passage through both telescopes and its spin repeats: 2 to 8 transits in a few hours).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.alerts.history import History
from pipeline.instrument import BASIC_ANGLE_DEG, SPIN_PERIOD_S, SPIN_RATE_ARCSEC_S, hodgkin_sigma_g
from pipeline.mission_time import from_utc, julian_date

ENV_DIR = "SOC_GAIA_ALERTS_DIR"
LIGHTCURVE_HEADERS = ("#Date,JD,averagemag.", "#Date,JD(TCB),averagemag")
ALERTS_HEADER = (
    "#Name",
    "Date",
    "RaDeg",
    "DecDeg",
    "AlertMag",
    "HistoricMag",
    "HistoricStdDev",
    "Class",
    "Published",
    "Comment",
    "TNSid",
)
MISSING_MAGS = ("null", "untrusted")
JD_TOLERANCE_D = 0.002  # JD rounded to 3 decimals (0.0005 d) plus the date's 1-s resolution, with margin
DUPLICATE_S = 60.0
BASIC_ANGLE_S = BASIC_ANGLE_DEG * 3600.0 / SPIN_RATE_ARCSEC_S  # 106.5 min
FOV_TOLERANCE_S = 1200.0  # 20 min: the scan precesses, so spin repeats drift by minutes within a day
VISIT_S = 86400.0
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class GaiaDataError(ValueError):
    """A Gaia alerts data file that cannot be read (the message names the file and the line)."""


def data_dir(path: str | Path | None = None) -> Path:
    """The gaia-alerts data directory: path, else $SOC_GAIA_ALERTS_DIR, else <repo>/../shared/data/."""
    if path is None:
        path = os.environ.get(ENV_DIR) or Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
        path = Path(path)
        if path.name != "gaia-alerts" and (path / "gaia-alerts").is_dir():
            path = path / "gaia-alerts"
    path = Path(path).resolve()
    if not path.is_dir():
        raise GaiaDataError(f"{path}: the Gaia alerts data directory does not exist (set ${ENV_DIR})")
    return path


def _date(text: str, where: str) -> float:
    try:
        d = dt.datetime.strptime(text, DATE_FORMAT)
    except ValueError:
        raise GaiaDataError(f"{where}: bad date {text!r} (expected YYYY-MM-DD HH:MM:SS)") from None
    return float(from_utc(np.datetime64(d, "s")))


def _number(text: str, what: str, where: str, empty_ok: bool = False) -> float:
    if empty_ok and text == "":
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        raise GaiaDataError(f"{where}: bad {what} {text!r}") from None
    if not np.isfinite(value):
        raise GaiaDataError(f"{where}: bad {what} {text!r}")
    return value


# --- light curves -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LightCurve:
    """One alert's light curve as in the file, one entry per data row (file order)."""

    name: str
    path: Path
    header: str
    t: np.ndarray  # UTC mission seconds of Date
    jd: np.ndarray
    mag: np.ndarray  # NaN for null and untrusted
    status: np.ndarray  # str objects: 'ok' | 'null' | 'untrusted'
    line: np.ndarray  # 1-based line number in the file

    def __len__(self) -> int:
        return int(self.t.shape[0])


def read_lightcurve(path: str | Path) -> LightCurve:
    """Parse lightcurves/<Name>.csv: name line, one of LIGHTCURVE_HEADERS, rows `Date,JD,mag`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GaiaDataError(f"{path}: cannot read: {exc.strerror}") from None
    lines = text.split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) < 2:
        raise GaiaDataError(f"{path}: no name and header lines")
    name = lines[0].strip()
    if not name.startswith("Gaia") or name != path.stem:
        raise GaiaDataError(f"{path}:1: name line {name!r} does not match the file name {path.stem!r}")
    header = lines[1].strip()
    if header not in LIGHTCURVE_HEADERS:
        raise GaiaDataError(f"{path}:2: unknown header {header!r} (expected one of {LIGHTCURVE_HEADERS})")
    n = len(lines) - 2
    t, jd, mag = np.empty(n), np.empty(n), np.empty(n)
    status = np.empty(n, dtype=object)
    for k, raw in enumerate(lines[2:]):
        where = f"{path}:{k + 3}"
        cols = raw.rstrip("\r").split(",")
        if len(cols) != 3:
            raise GaiaDataError(f"{where}: {len(cols)} columns, expected 3 (Date,JD,mag): {raw!r}")
        t[k] = _date(cols[0], where)
        jd[k] = _number(cols[1], "JD", where)
        if abs(jd[k] - float(julian_date(t[k]))) > JD_TOLERANCE_D:
            raise GaiaDataError(f"{where}: JD {cols[1]} disagrees with the date {cols[0]}")
        m = cols[2].strip()
        if m in MISSING_MAGS:
            mag[k] = np.nan
            status[k] = m
        else:
            mag[k] = _number(m, "magnitude", where)
            status[k] = "ok"
    if n == 0:
        raise GaiaDataError(f"{path}: no data rows")
    return LightCurve(name, path, header, t, jd, mag, status, np.arange(3, n + 3))


def visits_of(t: np.ndarray, visit_s: float = VISIT_S) -> np.ndarray:
    """Visit index of each time (sorted ascending): a visit starts at the first time not in an earlier
    visit and holds every time within visit_s of its start."""
    t = np.asarray(t, dtype=float)
    visit = np.empty(t.shape[0], dtype=np.int64)
    start, k = 0, 0
    while start < t.shape[0]:
        end = int(np.searchsorted(t, t[start] + visit_s, side="left"))
        visit[start:end] = k
        start, k = end, k + 1
    return visit


def assign_fov(t: np.ndarray, visit: np.ndarray) -> np.ndarray:
    """Field of view (0 preceding, 1 following) of each transit from the timing within its visit (see the
    module docstring). t sorted ascending, visit from visits_of."""
    t = np.asarray(t, dtype=float)
    visit = np.asarray(visit)
    n = t.shape[0]
    fov = np.zeros(n, dtype=np.int16)
    if n == 0:
        return fov
    first = np.searchsorted(visit, visit, side="left")  # row of each visit's first transit
    delay = t - t[first]
    phase = np.mod(delay, SPIN_PERIOD_S)
    same = np.minimum(phase, SPIN_PERIOD_S - phase) <= FOV_TOLERANCE_S
    # is the first transit of the visit the following telescope? Decided by the first other-telescope one
    other_rows = np.flatnonzero(~same)
    first_is_following = np.zeros(n, dtype=bool)
    if other_rows.size:
        v_other, idx = np.unique(visit[other_rows], return_index=True)
        ph = phase[other_rows[idx]]
        following = np.abs(ph - (SPIN_PERIOD_S - BASIC_ANGLE_S)) < np.abs(ph - BASIC_ANGLE_S)
        lookup = np.zeros(int(visit.max()) + 1, dtype=bool)
        lookup[v_other] = following
        first_is_following = lookup[visit]
    fov[:] = np.where(same, first_is_following, ~first_is_following).astype(np.int16)
    return fov


def merge_duplicates(t: np.ndarray, mag: np.ndarray, duplicate_s: float = DUPLICATE_S) -> np.ndarray:
    """Indices of the rows kept when rows less than duplicate_s after the previous row are the same transit:
    per group the first row with a magnitude, or the first row. t sorted ascending."""
    t = np.asarray(t, dtype=float)
    n = t.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    group = np.concatenate([[0], np.cumsum(np.diff(t) >= duplicate_s)])
    rows = np.arange(n)
    big = n + 1
    starts = np.flatnonzero(np.concatenate([[True], group[1:] != group[:-1]]))
    first_ok = np.minimum.reduceat(np.where(np.isfinite(mag), rows, big), starts)
    return np.where(first_ok < big, first_ok, starts).astype(np.int64)


@dataclass(frozen=True)
class Transits:
    """The transits of one light curve after merging duplicates, with their visit and field of view."""

    t: np.ndarray
    mag: np.ndarray
    status: np.ndarray
    line: np.ndarray
    visit: np.ndarray
    fov: np.ndarray


def lightcurve_transits(lc: LightCurve, visit_s: float = VISIT_S) -> Transits:
    """Sort, merge duplicates, cut into visits and assign fields of view."""
    order = np.argsort(lc.t, kind="stable")
    t, mag = lc.t[order], lc.mag[order]
    keep = merge_duplicates(t, mag)
    t, mag = t[keep], mag[keep]
    visit = visits_of(t, visit_s)
    fov = assign_fov(t, visit)
    return Transits(t, mag, lc.status[order][keep], lc.line[order][keep], visit, fov)


def lightcurve_history(lc: LightCurve | Transits, source_id: int = 1, new=None) -> History:
    """The History of one light curve's source (all transits historic unless new, a boolean per transit of
    lightcurve_transits, says otherwise). g_mag_err from the Hodgkin et al. (2021) model."""
    tr = lc if isinstance(lc, Transits) else lightcurve_transits(lc)
    n = tr.t.shape[0]
    return History.from_rows(
        source_id=np.full(n, source_id, dtype=np.int64),
        t=tr.t,
        g_mag=tr.mag,
        g_mag_err=np.where(np.isfinite(tr.mag), hodgkin_sigma_g(np.nan_to_num(tr.mag, nan=20.0)), np.nan),
        fov=tr.fov,
        new=np.zeros(n, bool) if new is None else new,
    )


def lightcurve_paths(directory: str | Path | None = None) -> list[Path]:
    """The light-curve files of the data directory, sorted by name."""
    d = data_dir(directory) / "lightcurves"
    paths = sorted(d.glob("*.csv"))
    if not paths:
        raise GaiaDataError(f"{d}: no light curves (*.csv)")
    return paths


# --- the alerts index ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlertsIndex:
    """alerts.csv as columns (file order)."""

    name: np.ndarray  # str objects
    t: np.ndarray  # UTC mission seconds of Date (the triggering transit)
    ra: np.ndarray
    dec: np.ndarray
    alert_mag: np.ndarray
    historic_mag: np.ndarray  # NaN for new sources
    historic_std: np.ndarray
    cls: np.ndarray  # str objects (Class)
    published: np.ndarray  # UTC mission seconds
    comment: np.ndarray
    tns: np.ndarray

    def __len__(self) -> int:
        return int(self.name.shape[0])

    def row(self, name: str) -> dict:
        """The entry of one alert as a dict; KeyError if absent."""
        hit = np.flatnonzero(self.name == name)
        if hit.size == 0:
            raise KeyError(f"alert {name!r} is not in the alerts index")
        k = int(hit[0])
        return {f: getattr(self, f)[k] for f in self.__dataclass_fields__}


def read_alerts(path: str | Path | None = None) -> AlertsIndex:
    """Parse alerts.csv (default: the data directory's). Quoted fields may hold commas; header fields have
    leading spaces (skipinitialspace); empty HistoricMag / HistoricStdDev are NaN (new sources)."""
    path = data_dir() / "alerts.csv" if path is None else Path(path)
    try:
        fh = path.open(newline="")
    except OSError as exc:
        raise GaiaDataError(f"{path}: cannot read: {exc.strerror}") from None
    cols: dict[str, list] = {k: [] for k in AlertsIndex.__dataclass_fields__}
    with fh:
        reader = csv.reader(fh, skipinitialspace=True)
        try:
            header = next(reader)
        except StopIteration:
            raise GaiaDataError(f"{path}: empty file") from None
        if tuple(h.strip() for h in header) != ALERTS_HEADER:
            raise GaiaDataError(f"{path}:1: unexpected header {header}")
        blank_at = None
        try:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row:
                    blank_at = where
                    continue
                if blank_at is not None:
                    raise GaiaDataError(f"{blank_at}: empty line inside the data")
                if len(row) != len(ALERTS_HEADER):
                    raise GaiaDataError(f"{where}: {len(row)} columns, expected {len(ALERTS_HEADER)}")
                name, date, ra, dec, amag, hmag, hstd, klass, pub, comment, tns = row
                if not name.startswith("Gaia"):
                    raise GaiaDataError(f"{where}: bad alert name {name!r}")
                cols["name"].append(name)
                cols["t"].append(_date(date, where))
                cols["ra"].append(_number(ra, "RaDeg", where))
                cols["dec"].append(_number(dec, "DecDeg", where))
                cols["alert_mag"].append(_number(amag, "AlertMag", where))
                cols["historic_mag"].append(_number(hmag, "HistoricMag", where, empty_ok=True))
                cols["historic_std"].append(_number(hstd, "HistoricStdDev", where, empty_ok=True))
                cols["cls"].append(klass)
                cols["published"].append(_date(pub, where) if pub else float("nan"))
                cols["comment"].append(comment)
                cols["tns"].append(tns)
        except csv.Error as exc:
            raise GaiaDataError(f"{path}:{reader.line_num}: {exc}") from None
    out = {
        k: np.array(v, dtype=object if k in ("name", "cls", "comment", "tns") else float)
        for k, v in cols.items()
    }
    return AlertsIndex(**out)
