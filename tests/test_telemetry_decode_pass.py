"""decode_pass on a mixed, interleaved stream: clean, and with the damage a downlink does."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.telemetry import layout as L
from pipeline.telemetry.batch import PacketBatch
from pipeline.telemetry.decode import decode_pass
from pipeline.telemetry.encode import (
    encode_attitude,
    encode_hk_bias,
    encode_hk_power,
    encode_hk_thermal,
    encode_star,
    encode_timecorr,
)
from pipeline.telemetry.layout import TelemetryError


def mixed_stream(seed=0, n_star=120, n_each=6):
    """All kinds, interleaved in OBT order (as a downlink would send them)."""
    rng = np.random.default_rng(seed)
    t0 = 2.0e7
    ns = rng.choice([12, 18], n_star)
    j = np.arange(18)
    amp = 10 ** rng.uniform(1, 4, n_star)
    samples = np.rint(1500 + amp[:, None, None] * np.exp(-0.5 * ((j - ns[:, None, None] / 2) / 0.9) ** 2))
    samples = (samples + rng.normal(0, 2, (n_star, 9, 18))).clip(0, 65535).astype(np.uint16)
    star = encode_star(
        obt=t0 + np.sort(rng.uniform(0, 600, n_star)),
        seq=np.arange(n_star),
        fov=rng.integers(0, 2, n_star),
        row=rng.integers(0, 7, n_star),
        mag_class=rng.integers(0, 3, n_star),
        ac_pixel=rng.integers(0, 1966, n_star),
        sm_flux=rng.integers(0, 10**6, n_star),
        gate=rng.integers(0, 11, n_star),
        flags=rng.integers(0, 2, n_star),
        al_offset=rng.integers(-5, 6, (n_star, 9)),
        samples=samples,
        n_samples=ns,
    )
    t = t0 + np.linspace(0, 600, n_each)
    s = np.arange(n_each)
    quat = rng.normal(size=(n_each, 4))
    parts = [
        star,
        encode_hk_thermal(t + 0.1, s, rng.uniform(150, 300, (n_each, 9))),
        encode_hk_bias(t + 0.2, s, rng.uniform(1400, 1600, (n_each, 7, 10))),
        encode_hk_power(t + 0.3, s, rng.uniform(0, 30, (n_each, 8))),
        encode_attitude(
            t + 0.4, s, quat / np.linalg.norm(quat, axis=1, keepdims=True), *rng.uniform(0, 6, (3, n_each))
        ),
        encode_timecorr(t + 0.5, s, t - 1.2e6, np.full(n_each, 1 + 4e-9)),
    ]
    batch = PacketBatch.concat(parts)
    batch = batch.take(np.argsort(batch.obt, kind="stable"))
    return batch, batch.tobytes()


@pytest.fixture(scope="module")
def stream():
    return mixed_stream()


def accounted(dp, n):
    """Every byte is in exactly one accepted packet or problem."""
    cover = np.zeros(n, dtype=np.int64)
    for o, ln in zip(dp.packets["offset"], dp.packets["length"], strict=True):
        cover[o : o + ln] += 1
    for p in dp.problems:
        cover[p.offset : p.offset + p.length] += 1
    return bool(np.all(cover == 1)) and dp.bytes_accounted == n


def test_clean_stream(stream):
    batch, data = stream
    dp = decode_pass(data)
    assert dp.problems == []
    assert np.array_equal(dp.packets["offset"], batch.start)
    assert np.array_equal(dp.packets["length"], batch.length)
    assert np.array_equal(dp.packets["apid"], batch.apid)
    assert np.array_equal(dp.packets["seq"], batch.seq)
    assert np.array_equal(dp.packets["obt"], batch.obt)
    assert len(dp.star["obt"]) == 120
    for key in ("hk_thermal", "hk_bias", "hk_power", "attitude", "timecorr"):
        d = getattr(dp, key)
        assert len(d["obt"]) == 6 and np.array_equal(dp.packets["apid"][d["packet"]], np.full(6, d_apid(key)))
        assert np.array_equal(dp.packets["obt"][d["packet"]], d["obt"])
    assert np.array_equal(dp.packets["obt"][dp.star["packet"]], dp.star["obt"])
    assert dp.hk_bias["bias"].shape == (6, 7, 10) and dp.attitude["quat"].shape == (6, 4)
    assert accounted(dp, len(data))
    # the same through a numpy buffer
    dp2 = decode_pass(np.frombuffer(data, dtype=np.uint8))
    assert np.array_equal(dp2.packets, dp.packets)


def d_apid(key):
    return next(a for a, lay in L.FIXED_LAYOUTS.items() if lay.key == key)


def flip(data: bytes, byte: int, bit: int) -> bytes:
    b = bytearray(data)
    b[byte] ^= 1 << bit
    return bytes(b)


@pytest.mark.parametrize("victim", [7, 40])
def test_payload_bit_flip_is_one_crc_problem(stream, victim):
    batch, data = stream
    o, ln = int(batch.start[victim]), int(batch.length[victim])
    dp = decode_pass(flip(data, o + ln // 2, 3))
    assert len(dp.problems) == 1
    p = dp.problems[0]
    assert (p.offset, p.length, p.apid, p.seq) == (o, ln, batch.apid[victim], batch.seq[victim])
    assert p.reason.startswith("crc_mismatch: computed 0x")
    others = np.delete(np.arange(len(batch)), victim)
    assert np.array_equal(dp.packets["offset"], batch.start[others])
    assert accounted(dp, len(data))


@pytest.mark.parametrize("kind", ["star", "hk"])
def test_any_primary_header_bit_flip_loses_only_that_packet(stream, kind):
    """Flips in the length field (or anywhere in the 6-byte header): the packets after it are recovered,
    and the damaged packet is one crc_mismatch problem naming its true APID and sequence count."""
    batch, data = stream
    victim = int(np.flatnonzero(L.is_star_apid(batch.apid) == (kind == "star"))[10])
    o, ln = int(batch.start[victim]), int(batch.length[victim])
    others = np.delete(np.arange(len(batch)), victim)
    for bit in range(48):
        damaged = flip(data, o + bit // 8, 7 - bit % 8)
        dp = decode_pass(damaged)
        assert np.array_equal(dp.packets["offset"], batch.start[others]), bit
        assert len(dp.problems) == 1, (bit, dp.problems)
        p = dp.problems[0]
        assert (p.offset, p.length, p.apid, p.seq) == (o, ln, batch.apid[victim], batch.seq[victim]), bit
        assert p.reason.startswith("crc_mismatch: "), p.reason
        assert accounted(dp, len(damaged))


@pytest.mark.parametrize("value", [0x0000, 0x0101, 0xFFFF])
def test_length_field_overwritten(stream, value):
    batch, data = stream
    victim = 50
    o, ln = int(batch.start[victim]), int(batch.length[victim])
    damaged = bytearray(data)
    damaged[o + 4 : o + 6] = value.to_bytes(2, "big")
    dp = decode_pass(bytes(damaged))
    assert np.array_equal(dp.packets["offset"], np.delete(batch.start, victim))
    assert [(p.offset, p.length, p.apid) for p in dp.problems] == [(o, ln, batch.apid[victim])]
    assert dp.problems[0].reason.endswith(f"header declares {value + 7} bytes, {ln} found")
    assert accounted(dp, len(damaged))


def test_truncated_tail(stream):
    batch, data = stream
    cut = int(batch.start[-1]) + 20
    dp = decode_pass(data[:cut])
    assert len(dp.packets) == len(batch) - 1
    (p,) = dp.problems
    assert (p.offset, p.length) == (batch.start[-1], 20)
    assert p.reason == f"truncated: header declares {batch.length[-1]} bytes, 20 remain"
    assert p.apid == batch.apid[-1] and p.seq == batch.seq[-1]
    assert accounted(dp, cut)
    dp = decode_pass(data[: int(batch.start[-1]) + 3])  # not even a whole primary header
    assert dp.problems[-1].reason.startswith("truncated: partial primary header")


def test_garbage_inserted(stream):
    batch, data = stream
    at = int(batch.start[30])
    garbage = bytes(np.random.default_rng(1).integers(0, 256, 77, dtype=np.uint8))
    damaged = data[:at] + garbage + data[at:]
    dp = decode_pass(damaged)
    assert len(dp.packets) == len(batch)
    assert dp.packets["offset"].tolist() == [s + 77 * (s >= at) for s in batch.start.tolist()]
    assert all(p.reason.startswith("unframed: ") for p in dp.problems)
    assert (dp.problems[0].offset, sum(p.length for p in dp.problems)) == (at, 77)
    assert accounted(dp, len(damaged))
    # garbage at the very start and at the end as well
    damaged = garbage + data + garbage
    dp = decode_pass(damaged)
    assert len(dp.packets) == len(batch) and accounted(dp, len(damaged))
    assert dp.problems[0].offset == 0 and dp.problems[-1].offset + dp.problems[-1].length == len(damaged)


def test_dropped_bytes_and_multiple_faults(stream):
    batch, data = stream
    a, b = int(batch.start[10]) + 5, int(batch.start[60]) + 100
    damaged = bytearray(data[:a] + data[a + 9 :])  # 9 bytes lost inside packet 10
    damaged[b] ^= 0x40
    dp = decode_pass(bytes(damaged))
    lost = {10} | {int(np.searchsorted(batch.start, b + 9, side="right") - 1)}
    assert len(dp.packets) == len(batch) - len(lost)
    assert accounted(dp, len(damaged))


def test_strict_raises_at_first_problem(stream):
    batch, data = stream
    o = int(batch.start[12])
    with pytest.raises(TelemetryError, match=f"^offset {o}: crc_mismatch"):
        decode_pass(flip(data, o + 30, 0), strict=True)
    assert len(decode_pass(data, strict=True).packets) == len(batch)


def test_empty_and_garbage_only():
    dp = decode_pass(b"")
    assert len(dp.packets) == 0 and dp.problems == [] and len(dp.star["samples"]) == 0
    assert dp.hk_bias["bias"].shape == (0, 7, 10)
    junk = bytes(np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8))
    dp = decode_pass(junk)
    assert len(dp.packets) == 0 and accounted(dp, 5000)
    assert all(p.reason.startswith(("unframed", "crc_mismatch", "truncated")) for p in dp.problems)
