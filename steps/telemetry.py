"""The telemetry sets the acceptance features replay: small simulated days, on days operations has no
delivery of, simulated once per session, at one of two sizes (pytest --telemetry-size): "full" for `make
acceptance` and Jenkins' acceptance job, "small" (a day where full has a day and a half or two) for `make
test`, whose CI budget holds every scenario at that size.

Every set is simulated with the deployment's catalogue seed; the sets that check science against the
simulator's truth (the alerts) also use its catalogue scale, so their sources are the working catalogue's.
The others are smaller (scale 0.0003): their detections of fainter synthetic stars become new sources,
alike in every environment, which is all a comparison needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta
from functools import cache
from pathlib import Path

import numpy as np

from pipeline.intake import pending_files
from pipeline.mission_time import DAY_S, from_utc, iso
from pipeline.simulate.downlink import FAULT_KINDS, contact_schedule
from pipeline.simulate.run import SimConfig, simulate
from pipeline.simulate.scanlaw import ScanLaw
from pipeline.simulate.sky import great_circle_density

SMALL = 0.0003


@dataclass(frozen=True)
class SetSpec:
    """How to simulate a telemetry set; scale None: the deployment's catalogue scale."""

    days: float = 1.0
    scale: float | None = SMALL
    faults: tuple[str, ...] = ()
    downlink_margin: float = 1.3
    dense: bool = False  # on the day the scanning law sees the most stars (along the Galactic plane)
    first_day: date | None = None  # the first free day from this one (default FIRST_DAY)
    event_rate: float | None = None  # None: the simulator's


SETS = {  # a day and a half: a day's contacts, wherever they fall
    "clean day": SetSpec(days=1.5),
    "faulty day": SetSpec(days=1.5, faults=FAULT_KINDS),
    "dense Galactic-plane day": SetSpec(days=1.5, dense=True),
    # two days, every fault and a tight downlink (a backlog crosses passes), before the days operations
    # holds: its horizon is past them, so a chunk is due as soon as it has packets, and a pass held back
    # is late data for the chunks that other passes brought packets of
    "faulty days with a late pass": SetSpec(
        days=2.0, faults=FAULT_KINDS, downlink_margin=0.5, first_day=date(2016, 6, 1)
    ),
    "cloning reference": SetSpec(days=2.0),
    "cloning": SetSpec(days=2.0),
    # the events a recall is measured on: the rate of `soc alerts recall` (100 x the simulator's, pipeline
    # .alerts.recall), so that a day holds a few hundred visits to count; each source's events are its own
    "events day": SetSpec(days=1.5, scale=None, event_rate=0.05),
    # the release gate: one set per candidate, with a roomy downlink (every magnitude class delivered
    # within the set whatever the day's data rate, so its chunks become due and are reduced)
    "identical-release day": SetSpec(days=1.5, downlink_margin=3.0),
    "changed-release day": SetSpec(days=1.5, downlink_margin=3.0),
    # the failover drill: a day and a half, every fault (the watcher's resumption meets them all)
    "failover drill": SetSpec(days=1.5, faults=FAULT_KINDS, first_day=date(2016, 8, 5)),
}
# The sets each scenario replays besides an outline's examples (their `telemetry` column): a session
# simulates the sets of its selected scenarios ahead, in the order the scenarios run (steps/conftest.py).
SCENARIO_SETS = {
    "Corrupt, truncated, duplicated, late and replayed passes": ("faulty days with a late pass",),
    "A clone taken while operations ingests is consistent and recorded": ("cloning reference", "cloning"),
    "Injected photometric events produce alert candidates": ("events day",),
    "A candidate with a changed image-parameter setting fails the gate": ("changed-release day",),
    "A candidate built from the revision operations runs passes the gate": ("identical-release day",),
    "The primary is killed in the middle of an ingest: failover, resume, nothing lost or duplicated": (
        "failover drill",
    ),
}
# make test: every set a day long, which roughly halves its reduction
SMALL_DAYS = 1.0
SIZES = ("full", "small")


def sets_of_size(size: str) -> dict[str, SetSpec]:
    """The telemetry sets at a size of SIZES."""
    if size not in SIZES:
        raise ValueError(f"telemetry size {size!r}: one of {SIZES}")
    if size == "full":
        return SETS
    return {name: replace(spec, days=min(spec.days, SMALL_DAYS)) for name, spec in SETS.items()}


FIRST_DAY = date(2016, 9, 1)  # ordinary sets: the first free days from here, in the order asked for


@dataclass(frozen=True)
class TelemetrySet:
    name: str
    day: date
    config: SimConfig
    root: Path  # the simulator's output: passes/, truth/, summary.json

    @property
    def files(self) -> list[Path]:
        """The pass files (each with its sidecar) in name order."""
        return pending_files(self.root / "passes")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]


@cache
def dense_days(year_from: float) -> list[date]:
    """The days of a year of the scanning law from year_from (mission seconds), densest first: the mean
    surface density along each day's scan circles (pipeline.simulate.sky.great_circle_density)."""
    law = ScanLaw()
    t = year_from + np.arange(0, 365 * DAY_S, 1800.0)
    _, _, z = law.frame(t)
    daily = great_circle_density(z, 180).reshape(365, -1).mean(axis=1)
    return [date.fromisoformat(iso(year_from + i * DAY_S)[:10]) for i in np.argsort(-daily)]


# Sets are simulated with one seed: two sets whose days overlap carry the same transits under other
# sequence counts, which intake keeps as different packets. A set's deliveries are named from its first
# day, so a day is free when no delivery names it, the following days of the set (where a backlog lands)
# or the days before it where a set of any size (whose data runs on into this day) can have begun.
LONGEST_DAYS = int(np.ceil(max(spec.days for spec in SETS.values())))


# A set's day also needs its contacts: the stations' bookings vary (pipeline.simulate.downlink), and a day
# can hold no contact at all (2016-09-22 with seed 1) or one, early, that brings little; a set is given a day
# whose window holds MIN_CONTACTS passes.
MIN_CONTACTS = 2


class DayAllocator:
    """Days that no delivery of operations names (nor the days of a set around them: LONGEST_DAYS), none
    given twice in a session, whose contacts (seed: the deployment's) bring at least MIN_CONTACTS passes."""

    def __init__(self, delivered: set[str], seed: int):
        self.delivered = delivered
        self.seed = seed
        self.taken: set[date] = set()

    def _free(self, d: date, days: float) -> bool:
        span = [d + timedelta(i) for i in range(-LONGEST_DAYS, int(np.ceil(days)) + 1)]
        return not any(
            x in self.taken or any(x.strftime("-%Y%m%dT") in n for n in self.delivered) for x in span
        )

    def _contacts(self, d: date, days: float) -> int:
        t0 = float(from_utc(d.isoformat()))
        return len(contact_schedule(self.seed, t0, t0 + days * DAY_S))

    def take(self, spec: SetSpec) -> date:
        law = ScanLaw()
        candidates = (
            dense_days(law.t_ref + 30 * DAY_S)[:30]
            if spec.dense
            else ((spec.first_day or FIRST_DAY) + timedelta(n) for n in range(2000))
        )
        for d in candidates:
            if self._free(d, spec.days) and self._contacts(d, spec.days) >= MIN_CONTACTS:
                self.taken.update(d + timedelta(i) for i in range(int(np.ceil(spec.days)) + 1))
                return d
        raise AssertionError(f"no free day for a telemetry set {spec}: operations has them all")


def make_set(
    name: str, spec: SetSpec, day: date, seed: int, catalogue_scale: float, out: Path
) -> TelemetrySet:
    """Simulate the set (once: an existing output with a summary is reused)."""
    cfg = SimConfig(
        start=day.isoformat(), days=spec.days, scale=spec.scale or catalogue_scale, seed=seed,
        faults=spec.faults, downlink_margin=spec.downlink_margin, progress=False,
        **({} if spec.event_rate is None else {"event_rate": spec.event_rate}),
    )  # fmt: skip
    root = out / f"{name.replace(' ', '-')}-{day.isoformat()}"
    if not (root / "summary.json").exists():
        simulate(root, cfg)
    ts = TelemetrySet(name, day, cfg, root)
    if not ts.files:
        raise AssertionError(f"the {name} ({cfg}) holds no complete pass: give it more days")
    return ts
