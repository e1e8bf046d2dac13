"""The acceptance features' telemetry sets (steps/telemetry.py): their sizes, and the days they are given."""

from dataclasses import replace
from datetime import date, timedelta

import pytest

from pipeline.mission_time import DAY_S, from_utc
from pipeline.simulate.downlink import contact_schedule
from steps.telemetry import LONGEST_DAYS, MIN_CONTACTS, SETS, DayAllocator, SetSpec, sets_of_size

SEED = 1  # the deployment's catalogue seed in the inventories


def test_a_set_never_overlaps_the_days_of_a_set_delivered_before():
    """A set delivered before (named from 2016-09-23, a day and a half of data from then) runs into the next
    day: no set is given a day it can reach, nor one of the days of a set given before."""
    delivered = {"MLG-20160923T0049.tm", "NNO-20160923T1051.tm", "MLG-20160923T2311.tm"}
    allocator = DayAllocator(delivered, SEED)
    later = allocator.take(SetSpec(days=1.0, first_day=date(2016, 9, 23)))
    assert later - date(2016, 9, 23) > timedelta(days=LONGEST_DAYS)
    again = allocator.take(SetSpec(days=2.0, first_day=later - timedelta(days=1)))
    assert abs((again - later).days) > LONGEST_DAYS  # nor the days of a set of this session


def test_the_small_sets_are_the_full_ones_a_day_long():
    small, full = sets_of_size("small"), sets_of_size("full")
    assert full is SETS and small.keys() == full.keys()
    for name, spec in full.items():
        assert small[name] == replace(spec, days=min(spec.days, 1.0))
        assert small[name].days <= 1.0
    with pytest.raises(ValueError, match="telemetry size"):
        sets_of_size("huge")


def _contacts(d: date, days: float) -> int:
    t0 = float(from_utc(d.isoformat()))
    return len(contact_schedule(SEED, t0, t0 + days * DAY_S))


def test_a_set_is_given_a_day_with_contacts():
    """2016-09-22 holds no contact with this seed (a one-day set of it held no pass): the allocator skips
    it, and every day it gives holds MIN_CONTACTS passes or more."""
    assert _contacts(date(2016, 9, 22), 1.0) == 0
    allocator = DayAllocator(set(), SEED)
    d = allocator.take(SetSpec(days=1.0, first_day=date(2016, 9, 22)))
    assert d > date(2016, 9, 22)
    for _ in range(20):
        d = allocator.take(SetSpec(days=1.0, first_day=date(2016, 9, 1)))
        assert _contacts(d, 1.0) >= MIN_CONTACTS


def test_every_set_is_declared_by_the_scenario_that_replays_it():
    """SCENARIO_SETS (what a session simulates ahead) names scenarios the features have, and every set is
    replayed by one: a declared scenario's, or an example of an outline's `telemetry` column."""
    import re
    from pathlib import Path

    from steps.telemetry import SCENARIO_SETS

    text = "".join(p.read_text() for p in sorted((Path(__file__).parents[1] / "features").glob("*.feature")))
    scenarios = set(re.findall(r"^\s*Scenario:\s*(.+?)\s*$", text, re.MULTILINE))
    examples = set(re.findall(r"^\s*\|\s*([^|]+?)\s*\|\s*$", text, re.MULTILINE))
    assert set(SCENARIO_SETS) <= scenarios, set(SCENARIO_SETS) - scenarios
    declared = {name for names in SCENARIO_SETS.values() for name in names}
    assert set(SETS) == declared | (examples & set(SETS)), set(SETS) - declared - examples
