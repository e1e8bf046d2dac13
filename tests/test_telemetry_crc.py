"""CRC-16/CCITT-FALSE: test vector, vectorised segments against the stdlib, exhaustive single-bit flips."""

from __future__ import annotations

import binascii

import numpy as np
import pytest

from pipeline.telemetry import layout as L
from pipeline.telemetry.crc import crc16, crc16_segments
from pipeline.telemetry.decode import decode_packet
from pipeline.telemetry.encode import (
    encode_attitude,
    encode_hk_bias,
    encode_hk_power,
    encode_hk_thermal,
    encode_star,
    encode_timecorr,
)
from pipeline.telemetry.layout import TelemetryError


def test_published_check_value():
    assert crc16(b"123456789") == 0x29B1
    assert binascii.crc_hqx(b"123456789", 0xFFFF) == 0x29B1
    assert crc16(b"") == 0xFFFF
    buf = np.frombuffer(b"xx123456789", dtype=np.uint8)
    assert crc16_segments(buf, [2], [9]).tolist() == [0x29B1]


def test_segments_match_stdlib():
    rng = np.random.default_rng(0)
    buf = rng.integers(0, 256, 20_000, dtype=np.uint8)
    lengths = np.r_[np.arange(0, 70), rng.integers(0, 2000, 300), [1999, 2000, 0, 1]]
    starts = rng.integers(0, buf.size - 2000, lengths.size)  # overlapping, unsorted segments
    got = crc16_segments(buf, starts, lengths)
    assert got.dtype == np.uint16
    want = [binascii.crc_hqx(buf[s : s + n].tobytes(), 0xFFFF) for s, n in zip(starts, lengths, strict=True)]
    assert got.tolist() == want
    assert all(
        crc16(buf[s : s + n].tobytes()) == w
        for s, n, w in zip(starts[:50], lengths[:50], want[:50], strict=True)
    )
    assert crc16_segments(buf, [], []).size == 0
    with pytest.raises(ValueError):
        crc16_segments(buf, [buf.size - 1], [2])


def one_packet_of_every_kind() -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    x = np.arange(18)
    samples = np.rint(1500 + 800 * np.exp(-0.5 * ((x - 9) / 0.9) ** 2) + rng.normal(0, 2, (2, 9, 18)))
    samples[1, 3, 4] = 65535
    star = encode_star(
        obt=[3e7, 3e7 + 1],
        seq=[1, 2],
        fov=[0, 1],
        row=[3, 6],
        mag_class=[1, 2],
        ac_pixel=[100, 1900],
        sm_flux=[12345, 678],
        gate=[0, 4],
        flags=[0, 1],
        al_offset=rng.integers(-3, 4, (2, 9)),
        samples=samples.clip(0, 65535).astype(np.uint16),
        n_samples=[18, 12],
    )
    q = np.array([[0.1, 0.2, 0.3, np.sqrt(0.86)]])
    return {
        "star18": star.packet(0),
        "star12": star.packet(1),
        "hk_thermal": encode_hk_thermal([3e7], [3], rng.uniform(100, 300, (1, 9))).packet(0),
        "hk_bias": encode_hk_bias([3e7], [4], rng.uniform(1400, 1600, (1, 7, 10))).packet(0),
        "hk_power": encode_hk_power([3e7], [5], rng.uniform(0, 30, (1, 8))).packet(0),
        "attitude": encode_attitude([3e7], [6], q, [1.0], [2.0], [3.0]).packet(0),
        "timecorr": encode_timecorr([3e7], [7], [2.9e7], [1.0]).packet(0),
    }


PACKETS = one_packet_of_every_kind()


@pytest.mark.parametrize("kind", sorted(PACKETS))
def test_every_single_bit_flip_is_detected(kind):
    packet = PACKETS[kind]
    n = len(packet)
    assert binascii.crc_hqx(packet[:-2], 0xFFFF) == int.from_bytes(packet[-2:], "big")
    # all 8n single-bit-flipped copies back to back; none may carry a matching CRC
    copies = np.tile(np.frombuffer(packet, dtype=np.uint8), (8 * n, 1))
    bit = np.arange(8 * n)
    copies[bit, bit // 8] ^= (1 << (7 - bit % 8)).astype(np.uint8)
    flat = copies.ravel()
    starts = np.arange(8 * n) * n
    computed = crc16_segments(flat, starts, np.full(8 * n, n - 2))
    stored = copies[:, -2].astype(np.uint16) << 8 | copies[:, -1]
    assert not np.any(computed == stored)
    # and the strict decoder rejects every one of them
    for row in copies:
        with pytest.raises(TelemetryError):
            decode_packet(row.tobytes())
    assert decode_packet(packet)["length"] == n


def test_kinds_cover_every_apid_family():
    apids = {int.from_bytes(p[:2], "big") & 0x7FF for p in PACKETS.values()}
    assert set(L.FIXED_LAYOUTS) <= apids and any(L.is_star_apid(a) for a in apids)
