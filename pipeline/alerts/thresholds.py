"""Thresholds of the alert detectors and filters: packaged defaults in thresholds.yaml, overridable.

The reasoning for every value is written beside it in pipeline/alerts/thresholds.yaml and in
docs/alerts.md. `load_thresholds()` gives the defaults; `load_thresholds(path)` merges a (partial) YAML
file over them key by key; an unknown key or a value of the wrong type raises ThresholdsError.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

THRESHOLDS_FILE = "thresholds.yaml"
SEVERITIES = ("info", "warning", "error", "critical")  # as health_events.severity (pipeline.health.Severity)


class ThresholdsError(ValueError):
    """A thresholds file that cannot be used (the message names the file and the key)."""


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the detectors and filters; values from pipeline/alerts/thresholds.yaml (the one
    place for the defaults and their reasoning). Build with load_thresholds(); dataclasses.replace() makes
    variants (tests, tuning)."""

    # transit selection
    failure_flags: int  # transit flags that make a transit unusable (excluded from every statistic)
    # new_source
    new_source_max_g: float  # the mean G of a new source's new transits must be brighter than this
    # brightening / fading
    min_historic: int  # good historic transits needed to compare with
    catalogue_history_days: float  # a history departing from the catalogue G this young is an event
    min_delta_mag: float  # |new - historic mean| of every agreeing new transit (mag)
    min_significance: float  # |delta| / sigma of every agreeing new transit
    min_new_transits: int  # good new transits that must all agree
    historic_clip_sigma: float  # historic transits beyond this many robust sigmas leave the mean
    # filters
    min_fovs: int  # single_fov: distinct fields of view needed among the triggering transits
    neighbour_radius_arcsec: float  # bright_neighbour: a brighter catalogue source within this radius
    variable_scatter_ratio: float  # variable_history: historic scatter above this x the error model
    quality_flags: int  # quality_flags: any of these transit flags on a triggering transit
    min_health_severity: str  # bad_chunk: health events at or above this severity (health_events.severity)
    source_file: str = ""  # where the values came from (not a threshold)

    def as_dict(self) -> dict:
        """The thresholds as a plain mapping (for the run record, e.g. a jsonb column)."""
        return dataclasses.asdict(self)


_TYPES = {
    f.name: {"int": int, "float": float, "str": str}[str(f.type)]  # a str: postponed annotations
    for f in fields(Thresholds)
    if f.name != "source_file"
}


def _check(values: dict, where: str) -> dict:
    out = {}
    for key, value in values.items():
        if key not in _TYPES:
            raise ThresholdsError(f"{where}: unknown threshold {key!r}")
        kind = _TYPES[key]
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        elif kind is int and isinstance(value, int) and not isinstance(value, bool):
            value = int(value)
        elif kind is str and isinstance(value, str):
            pass
        else:
            raise ThresholdsError(f"{where}: threshold {key!r} must be a {kind.__name__}, got {value!r}")
        out[key] = value
    if "min_health_severity" in out and out["min_health_severity"] not in SEVERITIES:
        raise ThresholdsError(
            f"{where}: min_health_severity must be one of {', '.join(SEVERITIES)},"
            f" got {out['min_health_severity']!r}"
        )
    return out


def _read(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ThresholdsError(f"{where}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ThresholdsError(f"{where}: thresholds must be a YAML mapping")
    data.pop("version", None)
    return _check(data, where)


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    """The packaged defaults (path None), or the YAML file at path merged over them (a partial file changes
    only the keys it gives)."""
    values = _read(resources.files("pipeline.alerts").joinpath(THRESHOLDS_FILE).read_text(), THRESHOLDS_FILE)
    source = f"pipeline/alerts/{THRESHOLDS_FILE}"
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ThresholdsError(f"{p}: cannot read thresholds file: {exc.strerror}") from None
        values.update(_read(text, str(p)))
        source = f"{source} + {p}"
    missing = sorted(set(_TYPES) - set(values))
    if missing:
        raise ThresholdsError(f"{source}: threshold(s) {', '.join(missing)} missing from the defaults")
    th = Thresholds(**values, source_file=source)
    for name in ("min_historic", "min_new_transits", "min_fovs"):
        if getattr(th, name) < 1:
            raise ThresholdsError(f"{source}: {name} must be at least 1")
    for name in ("min_delta_mag", "min_significance", "neighbour_radius_arcsec", "variable_scatter_ratio",
                 "catalogue_history_days"):  # fmt: skip
        if getattr(th, name) < 0:
            raise ThresholdsError(f"{source}: {name} must not be negative")
    return th
