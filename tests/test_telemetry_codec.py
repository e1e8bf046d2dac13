"""Encode/decode round trips of every packet kind, the packet structure, and strict decoding errors."""

from __future__ import annotations

import binascii

import numpy as np
import pytest

from pipeline.telemetry import layout as L
from pipeline.telemetry import window_codec as W
from pipeline.telemetry.batch import PacketBatch, segment_index
from pipeline.telemetry.crc import crc16
from pipeline.telemetry.decode import decode_packet, decode_pass
from pipeline.telemetry.encode import (
    encode_attitude,
    encode_hk_bias,
    encode_hk_power,
    encode_hk_thermal,
    encode_star,
    encode_timecorr,
)
from pipeline.telemetry.layout import TelemetryError
from pipeline.telemetry.window_codec import decompress_windows

FINE = 2.0**-24


def f32(rng, shape, lo, hi):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def bits_equal(a, b, dtype):
    return np.array_equal(
        np.asarray(a, dtype=dtype).view(f"u{np.dtype(dtype).itemsize}"),
        np.asarray(b, dtype=dtype).view(f"u{np.dtype(dtype).itemsize}"),
    )


def star_windows(rng, n, n_samples):
    """Noisy Gaussian images on a 1500 ADU bias, with some special windows."""
    j = np.arange(18)
    amp = 10 ** rng.uniform(0.5, 4.3, n)
    img = amp[:, None, None] * np.exp(-0.5 * ((j - n_samples[:, None, None] / 2) / 0.9) ** 2)
    s = np.rint(1500 + img + rng.normal(0, 2, (n, 9, 18)))
    s = np.clip(s, 0, 65535).astype(np.uint16)
    s[0] = 65535  # saturated everywhere
    s[1, 4, 3:7] = 65535  # saturated core
    s[2] = 0
    s[3] = np.where((np.arange(9)[:, None] + j) % 2, 65535, 0)  # worst case for the predictor
    s[4] = rng.integers(0, 65536, (9, 18))  # incompressible
    return s


def star_inputs(rng, n, n_samples):
    ns = np.full(n, n_samples) if np.ndim(n_samples) == 0 else np.asarray(n_samples)
    return dict(
        obt=rng.uniform(1e6, 5e8, n),
        seq=rng.integers(0, 100_000, n),
        fov=rng.integers(0, 2, n),
        row=rng.integers(0, 7, n),
        mag_class=rng.integers(0, 3, n),
        ac_pixel=rng.integers(0, 65536, n),
        sm_flux=rng.integers(0, 2**32, n, dtype=np.uint64),
        gate=rng.integers(0, 11, n),
        flags=rng.integers(0, 2, n),
        al_offset=rng.integers(-128, 128, (n, 9)),
        samples=star_windows(rng, n, ns),
        n_samples=ns,
    )


def expected_samples(samples, n_samples):
    keep = np.arange(18)[None, None, :] < np.asarray(n_samples)[:, None, None]
    return np.where(keep, samples, 0).astype(np.uint16)


# --- layout ----------------------------------------------------------------------------------------------


def test_star_apid_map():
    m, f, r = np.meshgrid(np.arange(3), np.arange(2), np.arange(7), indexing="ij")
    apid = L.star_apid(m.ravel(), f.ravel(), r.ravel())
    assert apid.dtype == np.uint16 and len(set(apid.tolist())) == 42
    assert L.star_apid(2, 1, 6) == 0x100 | 2 << 4 | 1 << 3 | 6 == 0x12E
    back = L.parse_star_apid(apid)
    assert all(np.array_equal(b, x.ravel()) for b, x in zip(back, (m, f, r), strict=True))
    assert L.parse_star_apid(0x12E) == (2, 1, 6)
    assert np.all(L.is_star_apid(apid))
    assert not np.any(L.is_star_apid([0x010, 0x011, 0x012, 0x020, 0x021, 0x107, 0x130, 0x200, 0x0FF]))
    assert set(L.KNOWN_APIDS) == set(apid.tolist()) | {0x010, 0x011, 0x012, 0x020, 0x021}
    with pytest.raises(ValueError):
        L.star_apid(3, 0, 0)
    with pytest.raises(ValueError):
        L.parse_star_apid(0x010)
    assert L.STAR_FIXED_LEN == 22
    assert len(L.HK_POWER_NAMES) == 8


# --- fixed-length kinds ----------------------------------------------------------------------------------


def fixed_cases(rng, n):
    obt = rng.uniform(1e6, 5e8, n)
    seq = rng.integers(0, 16384, n)
    temps = f32(rng, (n, 9), 100, 300)
    bias = f32(rng, (n, 7, 10), 1400, 1600)
    power = f32(rng, (n, 8), 0, 30)
    quat = rng.normal(size=(n, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    ang = rng.uniform(0, 2 * np.pi, (3, n))
    utc = rng.uniform(0, 4e8, n)
    rate = 1 + rng.normal(0, 1e-8, n)
    return {
        "hk_thermal": (encode_hk_thermal(obt, seq, temps), obt, seq, {"temps": (temps, np.float32)}),
        "hk_bias": (encode_hk_bias(obt, seq, bias), obt, seq, {"bias": (bias, np.float32)}),
        "hk_power": (encode_hk_power(obt, seq, power), obt, seq, {"values": (power, np.float32)}),
        "attitude": (
            encode_attitude(obt, seq, quat, *ang),
            obt,
            seq,
            {
                "quat": (quat, np.float64),
                "spin_phase": (ang[0], np.float64),
                "precession_phase": (ang[1], np.float64),
                "sun_longitude": (ang[2], np.float64),
            },
        ),
        "timecorr": (
            encode_timecorr(obt, seq, utc, rate),
            obt,
            seq,
            {"utc": (utc, np.float64), "clock_rate": (rate, np.float64)},
        ),
    }


@pytest.mark.parametrize("kind", ["hk_thermal", "hk_bias", "hk_power", "attitude", "timecorr"])
def test_fixed_round_trip(kind):
    rng = np.random.default_rng(11)
    batch, obt, seq, values = fixed_cases(rng, 25)[kind]
    assert len(batch) == 25 and np.all(batch.length == L.FIXED_LAYOUTS[batch.apid[0]].length)
    assert np.all(np.abs(batch.obt - obt) <= FINE)
    # whole-pass decode (ccsdspy for the bodies)
    dp = decode_pass(batch.tobytes())
    assert dp.problems == []
    got = getattr(dp, kind)
    assert np.all(np.abs(got["obt"] - obt) <= FINE) and np.array_equal(got["obt"], batch.obt)
    assert np.array_equal(got["seq"], seq % 16384)
    for name, (v, dt) in values.items():
        assert bits_equal(got[name], v, dt), name
    # single-packet strict decode
    for i in (0, 24):
        d = decode_packet(batch.packet(i))
        assert d["kind"] == kind and d["apid"] == batch.apid[i] and d["seq"] == seq[i] % 16384
        assert abs(d["obt"] - obt[i]) <= FINE
        for name, (v, dt) in values.items():
            assert bits_equal(d[name], v[i], dt), name


def test_obt_and_seq_edges():
    obt = np.array([1e6, 1e6 + 1 - 2.0**-26, 5e8 + 0.123456789, 2.0**32 - 1.0, 0.0, 123.5])
    seq = np.array([0, 16383, 16384, 16385, -1, 10**9])
    b = encode_hk_power(obt, seq, np.zeros((6, 8)))
    dp = decode_pass(b.tobytes())
    assert np.all(np.abs(dp.hk_power["obt"] - obt) <= FINE)
    assert dp.hk_power["obt"][1] == 1e6 + 1  # the fine field carried into the coarse one
    assert dp.hk_power["seq"].tolist() == [0, 16383, 0, 1, 16383, 10**9 % 16384]
    with pytest.raises(ValueError):
        encode_hk_power([2.0**32], [0], np.zeros((1, 8)))
    with pytest.raises(ValueError):
        encode_hk_power([np.nan], [0], np.zeros((1, 8)))


def test_primary_and_secondary_header_fields():
    b = encode_timecorr([1234567.75], [16383 + 16384 * 3], [1.0], [1.0])
    p = b.packet(0)
    assert p[0] == 0x08 and p[1] == 0x21  # version 0, type 0, sec flag 1, APID 0x021
    assert p[2] >> 6 == 0b11 and ((p[2] & 0x3F) << 8 | p[3]) == 16383
    assert int.from_bytes(p[4:6], "big") == len(p) - 7
    assert int.from_bytes(p[6:10], "big") == 1234567
    assert int.from_bytes(p[10:13], "big") == 3 << 22  # 0.75 s in units of 2**-24 s
    assert p[13] == 1
    assert int.from_bytes(p[-2:], "big") == binascii.crc_hqx(p[:-2], 0xFFFF) == crc16(p[:-2])
    body = np.frombuffer(p[14:-2], dtype=">f8")
    assert body.tolist() == [1.0, 1.0]


# --- star packets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [L.CODEC_RICE, L.CODEC_ZSTD, L.CODEC_RAW])
@pytest.mark.parametrize("n_samples", [12, 18])
def test_star_round_trip(codec, n_samples):
    rng = np.random.default_rng(n_samples + 100 * codec)
    n = 40
    inp = star_inputs(rng, n, n_samples)
    batch = encode_star(**inp, codec=codec)
    assert len(batch) == n
    assert np.all(batch.length >= L.STAR_MIN_LENGTH) and np.all(batch.length <= L.STAR_MAX_LENGTH)
    dp = decode_pass(batch.tobytes())
    assert dp.problems == []
    st = dp.star
    assert np.array_equal(st["packet"], np.arange(n))
    assert np.array_equal(st["apid"], L.star_apid(inp["mag_class"], inp["fov"], inp["row"]))
    for name in ("fov", "row", "mag_class", "ac_pixel", "sm_flux", "gate", "flags", "n_samples", "al_offset"):
        assert np.array_equal(st[name].astype(np.int64), np.asarray(inp[name]).astype(np.int64)), name
    assert np.array_equal(st["seq"], inp["seq"] % 16384)
    assert np.all(np.abs(st["obt"] - inp["obt"]) <= FINE)
    assert st["samples"].dtype == np.uint16 and st["samples"].shape == (n, 9, 18)
    assert np.array_equal(st["samples"], expected_samples(inp["samples"], inp["n_samples"]))
    codecs = st["codec"]
    assert codecs[4] == L.CODEC_RAW  # incompressible: falls back to raw samples
    if codec != L.CODEC_RAW:
        assert np.all(codecs[5:] == codec)
    # single-packet strict decode of a saturated one and a normal one
    for i in (1, 7):
        d = decode_packet(batch.packet(i))
        assert np.array_equal(d["samples"], expected_samples(inp["samples"][i : i + 1], [n_samples])[0])
        assert d["al_offset"].tolist() == inp["al_offset"][i].tolist()


def test_star_mixed_lengths_and_ratio():
    rng = np.random.default_rng(3)
    n = 300
    ns = rng.choice([12, 18], n)
    inp = star_inputs(rng, n, ns)
    batch = encode_star(**inp)
    dp = decode_pass(batch.tobytes())
    assert dp.problems == [] and np.array_equal(dp.star["n_samples"], ns)
    assert np.array_equal(dp.star["samples"], expected_samples(inp["samples"], ns))
    raw = 2 * 9 * ns[5:].sum()
    compressed = (batch.length[5:] - L.HEADER_LEN - L.STAR_FIXED_LEN - L.CRC_LEN).sum()
    assert raw / compressed > 1.8  # smooth noisy images compress well


def test_default_codec_is_zstd():
    assert L.DEFAULT_CODEC == L.CODEC_ZSTD
    rng = np.random.default_rng(6)
    inp = star_inputs(rng, 12, 12)
    dp = decode_pass(encode_star(**inp).tobytes())  # no codec given
    assert dp.star["codec"][4] == L.CODEC_RAW  # the incompressible window set falls back
    assert np.all(dp.star["codec"][5:] == L.CODEC_ZSTD)


def test_every_codec_in_one_mixed_pass():
    """Windows written with codecs 0, 1 and 2, interleaved in one pass, decode to the same samples."""
    rng = np.random.default_rng(7)
    n = 60
    ns = rng.choice([12, 18], n)
    inp = star_inputs(rng, n, ns)
    codecs = (L.CODEC_RAW, L.CODEC_ZSTD, L.CODEC_RICE)
    batch = PacketBatch.concat([encode_star(**inp, codec=c) for c in codecs])
    order = np.arange(3 * n).reshape(3, n).T.ravel()  # packet i with codec 0, 1, 2, then packet i + 1, ...
    dp = decode_pass(batch.take(order).tobytes())
    assert dp.problems == [] and len(dp.star["packet"]) == 3 * n
    sent = dp.star["codec"].reshape(n, 3)
    assert np.all(sent[5:] == codecs)  # each packet kept its codec (all but the special windows compress)
    assert np.all(sent[4] == L.CODEC_RAW)  # incompressible: every codec falls back to raw
    samples = dp.star["samples"].reshape(n, 3, 9, 18)
    expected = expected_samples(inp["samples"], ns)
    for k in range(3):
        assert np.array_equal(samples[:, k], expected), codecs[k]
    assert np.array_equal(dp.star["n_samples"].reshape(n, 3), np.repeat(ns[:, None], 3, axis=1))


def test_decompress_windows_needs_known_codecs():
    buf = np.zeros(216, np.uint8)
    with pytest.raises(ValueError):
        decompress_windows(buf, [0], [216], [7], [12])
    with pytest.raises(ValueError):
        decompress_windows(buf, [0], [216], [L.CODEC_RAW], [13])
    samples, reasons = decompress_windows(buf, [0, 0], [216, 200], [L.CODEC_RAW] * 2, [12, 12])
    assert reasons == {1: "raw payload of 200 bytes, expected 216"}
    assert samples.shape == (2, 9, 18) and not samples.any()


def test_star_rejects_bad_inputs():
    rng = np.random.default_rng(4)
    inp = star_inputs(rng, 6, 12)
    for key, value in [
        ("n_samples", np.full(6, 13)),
        ("gate", np.full(6, 11)),
        ("row", np.full(6, 7)),
        ("al_offset", np.full((6, 9), 200)),
        ("samples", np.zeros((6, 9, 12), np.uint16)),
    ]:
        with pytest.raises(ValueError):
            encode_star(**{**inp, key: value})


# --- strict decoding errors ------------------------------------------------------------------------------


def in_buffer(packet: bytes, at: int = 300) -> bytes:
    return bytes(range(256)) + bytes(at - 256) + packet


def with_crc(p: bytearray) -> bytes:
    p[-2:] = binascii.crc_hqx(bytes(p[:-2]), 0xFFFF).to_bytes(2, "big")
    return bytes(p)


def good_packet() -> bytes:
    return encode_hk_thermal([2e6], [5], np.full((1, 9), 290.0)).packet(0)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p[:4], "offset 300: short header"),
        (lambda p: p[:-1], "offset 300: truncated: header declares 52 bytes, 51 remain"),
        (lambda p: p[:4] + b"\xff\xff" + p[6:], "offset 300: truncated: header declares 65542 bytes"),
        (lambda p: bytes([p[0] & 0xF8 | 0x7, 0xFF]) + p[2:], "offset 300: unknown APID 0x7FF"),
        (lambda p: bytes([p[0] | 0x20]) + p[1:], "offset 300: bad primary header: version 1"),
        (lambda p: bytes([p[0] | 0x10]) + p[1:], "offset 300: bad primary header: type 1"),
        (lambda p: bytes([p[0] & ~0x08]) + p[1:], "offset 300: bad primary header: secondary header flag 0"),
        (
            lambda p: p[:2] + bytes([p[2] & 0x3F]) + p[3:],
            "offset 300: bad primary header: sequence flags 0b00",
        ),
        (lambda p: p[:20] + bytes([p[20] ^ 1]) + p[21:], "offset 300: crc_mismatch: computed 0x"),
        (
            lambda p: with_crc(bytearray(p[:13] + b"\x02" + p[14:])),
            "offset 300: bad_payload: layout version 2",
        ),
    ],
)
def test_decode_packet_errors_name_the_offset(damage, message):
    data = in_buffer(damage(good_packet()))
    with pytest.raises(TelemetryError) as info:
        decode_packet(data, 300)
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.offset == 300
    assert isinstance(info.value, ValueError)


def test_decode_packet_wrong_length_for_apid():
    p = bytearray(good_packet() + bytes(8))
    p[4:6] = (len(p) - 7).to_bytes(2, "big")
    with pytest.raises(TelemetryError, match=r"^offset 300: bad length: header declares 60 bytes"):
        decode_packet(in_buffer(with_crc(p)), 300)


def star_packet(codec=L.CODEC_RICE, n_samples=18) -> bytes:
    rng = np.random.default_rng(9)
    inp = star_inputs(rng, 8, n_samples)
    return encode_star(**inp, codec=codec).packet(7)


@pytest.mark.parametrize("codec", [L.CODEC_RICE, L.CODEC_ZSTD])
def test_bad_payload_with_valid_crc(codec):
    p = bytearray(star_packet(codec))
    p[36 + 3] ^= 0xFF  # inside the compressed payload
    p[36 + 4] ^= 0xFF
    bad = with_crc(p)
    with pytest.raises(TelemetryError, match=r"^offset 300: bad_payload: "):
        decode_packet(in_buffer(bad), 300)
    # in a pass, the packet moves to the problems and its neighbours decode
    good = star_packet(codec)
    dp = decode_pass(good + bad + good)
    assert len(dp.packets) == 2 and dp.packets["offset"].tolist() == [0, len(good) + len(bad)]
    assert [(q.offset, q.length, q.reason.split(":")[0]) for q in dp.problems] == [
        (len(good), len(bad), "bad_payload")
    ]
    assert dp.problems[0].apid == bad[1] | (bad[0] & 7) << 8
    assert np.array_equal(dp.star["packet"], [0, 1])


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (14 + 8, 13, "bad_payload: n_samples 13"),
        (14 + 9, 8, "bad_payload: n_windows 8"),
        (14 + 19, 7, "bad_payload: unknown codec 7"),
        (14 + 6, 11, "bad_payload: gate 11"),
        (14 + 21, 1, "bad_payload: payload_length"),
    ],
)
def test_bad_star_fixed_fields(offset, value, reason):
    p = bytearray(star_packet())
    p[offset] = value
    with pytest.raises(TelemetryError, match=f"^offset 300: {reason}"):
        decode_packet(in_buffer(with_crc(p)), 300)


@pytest.mark.parametrize("codec", [L.CODEC_RICE, L.CODEC_ZSTD, L.CODEC_RAW])
def test_judging_without_samples_gives_the_same_packets_and_problems(codec):
    """decode_pass(samples=False), intake's judgement of a pass: the same packets and problems, no windows."""
    good = star_packet(codec)
    bad = bytearray(star_packet(codec))
    bad[36 + 3] ^= 0xFF
    bad[36 + 4] ^= 0xFF
    fixed = bytearray(star_packet(codec))
    fixed[14 + 8] = 13  # n_samples
    data = good + with_crc(bad) + good + with_crc(fixed) + b"\x00garbage" + good
    full, judged = decode_pass(data), decode_pass(data, samples=False)
    n_bad = 2 if codec == L.CODEC_RAW else 3  # raw samples are any bytes of the right length
    assert judged.problems == full.problems and len(full.problems) == n_bad
    assert np.array_equal(judged.packets, full.packets) and len(full.packets) == 6 - n_bad
    assert "samples" not in judged.star and full.star["samples"].shape == (6 - n_bad, 9, 18)
    assert all(np.array_equal(judged.star[k], full.star[k]) for k in judged.star)


def test_zstd_batches_isolate_bad_frames_on_every_path():
    """Frames gathered behind their magic numbers or given it in place, on one thread or several."""
    rng = np.random.default_rng(4)
    x = rng.integers(1400, 1700, (W.ZSTD_THREADS_FROM + 100, 9, 12))
    flat, ln = W.zstd_compress_rows(W.zstd_filter(x))
    flat = flat.copy()
    bad = rng.choice(len(ln), 5, replace=False)
    st = np.cumsum(ln) - ln
    flat[st[bad]] ^= 0xFF
    flat[st[bad] + 1] ^= 0x5A
    gap = 6  # the same frames with room before each: the magic number is written there
    spaced = np.zeros(flat.size + gap * len(ln), np.uint8)
    st_spaced = st + gap * (np.arange(len(ln)) + 1)
    spaced[segment_index(st_spaced, ln)] = flat
    for buf, starts in ((flat, st), (spaced, st_spaced)):
        for size in (len(ln), 50):  # threads from ZSTD_THREADS_FROM frames, one thread below
            out, ok = W.zstd_decompress_segments(buf, starts[:size], ln[:size], 216)
            assert np.array_equal(np.flatnonzero(~ok), np.sort(bad[bad < size]))
            assert np.array_equal(W.zstd_unfilter(out[ok], 12), x[:size][ok])
            checked = W.zstd_decompress_segments(buf, starts[:size], ln[:size], 216, keep=False)
            assert checked[0] is None and np.array_equal(checked[1], ok)
