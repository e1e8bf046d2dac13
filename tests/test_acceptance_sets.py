"""The acceptance features' telemetry sets (steps/telemetry.py): their sizes, and the days they are given."""

from dataclasses import replace
from datetime import date, timedelta

import pytest

from steps.telemetry import LONGEST_DAYS, SETS, DayAllocator, SetSpec, sets_of_size


def test_a_set_never_overlaps_the_days_of_a_set_delivered_before():
    """A set delivered before (named from 2016-09-23, a day and a half of data from then) runs into the next
    day: no set is given a day it can reach, nor one of the days of a set given before."""
    delivered = {"MLG-20160923T0049.tm", "NNO-20160923T1051.tm", "MLG-20160923T2311.tm"}
    allocator = DayAllocator(delivered)
    later = allocator.take(SetSpec(days=1.0, first_day=date(2016, 9, 23)))
    assert later - date(2016, 9, 23) > timedelta(days=LONGEST_DAYS)
    again = allocator.take(SetSpec(days=2.0, first_day=later - timedelta(days=1)))
    assert abs((again - later).days) > LONGEST_DAYS  # nor the days of a set of this session


def test_the_small_sets_are_the_full_ones_a_day_long():
    small, full = sets_of_size("small"), sets_of_size("full")
    assert full is SETS and small.keys() == full.keys()
    for name, spec in full.items():
        if name == "events day":  # its recall needs the quiet history of its sources within the set
            assert small[name] == spec
            continue
        assert small[name] == replace(spec, days=min(spec.days, 1.0))
        assert small[name].days <= 1.0
    with pytest.raises(ValueError, match="telemetry size"):
        sets_of_size("huge")
