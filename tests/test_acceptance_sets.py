"""The acceptance features' telemetry sets (steps/telemetry.py): their sizes, and the days they are given."""

from datetime import date, timedelta

import pytest

from pipeline.simulate.events import DEFAULT_EVENT_RATE
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
        kept = ("faults", "scale", "dense", "first_day")
        assert small[name].days == min(spec.days, 1.0)
        assert [getattr(small[name], k) for k in kept] == [getattr(spec, k) for k in kept]
        if name == "events day":  # its day's chunks due within the set, and events enough to count
            assert small[name].downlink_margin == 3.0 and small[name].event_rate > DEFAULT_EVENT_RATE
        else:
            assert small[name].downlink_margin == spec.downlink_margin and small[name].event_rate is None
    with pytest.raises(ValueError, match="telemetry size"):
        sets_of_size("huge")
