import itertools

import numpy as np

from pipeline.mission_time import DAY_S
from pipeline.simulate.downlink import OnboardStore, contact_schedule, deliver
from pipeline.telemetry.batch import PacketBatch

T0 = 2.1e8 - (2.1e8 % DAY_S)


def _batch(n, size=100, apid=0x100):
    lengths = np.full(n, size)
    start = np.arange(n) * size
    buf = np.random.default_rng(0).integers(0, 256, n * size).astype(np.uint8)
    return PacketBatch(
        buf,
        start,
        lengths,
        np.full(n, apid, np.uint16),
        np.arange(n).astype(np.uint16),
        np.arange(n, dtype=float),
    )


def test_contacts_do_not_overlap_and_every_day_has_one():
    cs = contact_schedule(3, T0, T0 + 30 * DAY_S)
    for a, b in itertools.pairwise(cs):
        assert a.los <= b.aos
    # every UTC day has contact time, and the spacecraft is never out of contact for a whole day
    for day in range(1, 29):
        d0, d1 = T0 + day * DAY_S, T0 + (day + 1) * DAY_S
        assert any(c.aos < d1 and c.los > d0 for c in cs), day
    gaps = [b.aos - a.los for a, b in itertools.pairwise(cs)]
    assert max(gaps) < 1.25 * DAY_S
    hours = sum(c.los - c.aos for c in cs) / 3600 / 30
    assert 4 < hours < 16
    # a day's contacts do not depend on the span simulated
    one = contact_schedule(3, T0 + 10 * DAY_S, T0 + 11 * DAY_S)
    assert one == [c for c in cs if T0 + 10 * DAY_S <= c.aos < T0 + 11 * DAY_S]


def test_the_store_sends_by_priority_and_keeps_what_does_not_fit():
    store = OnboardStore()
    store.add(_batch(10, apid=0x120), np.full(10, 4), np.arange(10.0), np.arange(10))
    store.add(_batch(5, apid=0x010), np.full(5, 0), np.arange(5.0) + 20, np.arange(10, 15))
    sent, _t_gen, keys = store.downlink(capacity_bytes=800, until=100.0)
    assert list(keys) == [10, 11, 12, 13, 14, 0, 1, 2]
    assert sent.nbytes <= 800 and list(sent.apid[:5]) == [0x010] * 5
    assert len(store) == 7
    _sent, _, keys = store.downlink(capacity_bytes=10_000, until=5.5)
    assert list(keys) == [3, 4, 5]  # only what was generated before the contact ended
    assert len(store) == 4


def test_faults_are_recorded_and_visible_in_the_bytes():
    sent = _batch(3000)
    rng = np.random.default_rng(1)
    d = deliver(rng, sent, ("gap", "duplicate", "bitflip"), truncate=True)
    kinds = [f["kind"] for f in d.faults]
    assert kinds.count("gap") == len(d.lost) > 0
    assert kinds.count("duplicate") == len(d.sent_index) - len(np.unique(d.sent_index)) > 0
    clean = sent.take(d.sent_index).tobytes()
    diff = np.flatnonzero(np.frombuffer(clean, np.uint8) != np.frombuffer(d.data, np.uint8))
    assert len(diff) == kinds.count("bitflip") > 0
    assert d.truncated_at is not None and kinds.count("truncate") >= 1
    assert len(d.data) == len(clean)  # the caller cuts the file; the sidecar describes the whole pass
