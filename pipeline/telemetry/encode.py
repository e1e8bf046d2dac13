"""Packet encoders: arrays of n packets' fields in, one PacketBatch out (numpy over packets, no loop each).

The star-window sample codecs live here too (the encoding half; decode.py has the other half):
- CODEC_RICE (default): predictive residuals, zigzag, Rice-coded with one parameter per window;
- CODEC_ZSTD: the same residuals (mod 2**16), zigzag, byte-shuffled, one magicless zstd frame per packet,
  compressed with ZstdCompressor.multi_compress_to_buffer;
- CODEC_RAW: the samples as they are; the encoder falls back to it for a window set that does not shrink.
docs/telemetry.md gives the bit layout and the measured ratios.
"""

from __future__ import annotations

import numpy as np
import zstandard

from pipeline.telemetry import layout as L
from pipeline.telemetry.batch import PacketBatch, segment_index
from pipeline.telemetry.crc import crc16_segments

# --- headers and assembly --------------------------------------------------------------------------------

HEADER_DTYPE = np.dtype(
    [
        ("primary", L.PRIMARY_DTYPE),
        ("coarse", ">u4"),
        ("fine", "u1", (3,)),
        ("layout_version", "u1"),
    ]
)


def obt_to_cuc(obt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OBT seconds -> (coarse uint32 s, fine uint32 in 2**-24 s, the OBT those two represent)."""
    t = np.asarray(obt, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(t >= 2.0**32):
        raise ValueError("obt must be finite and in [0, 2**32) s")
    coarse = np.floor(t)
    fine = np.rint((t - coarse) * L.OBT_FINE_SCALE)
    carry = fine >= L.OBT_FINE_SCALE
    coarse = coarse + carry
    fine = np.where(carry, 0.0, fine)
    if np.any(coarse >= 2.0**32):
        raise ValueError("obt rounds to 2**32 s")
    coarse = coarse.astype(np.uint32)
    fine = fine.astype(np.uint32)
    return coarse, fine, coarse + fine / float(L.OBT_FINE_SCALE)


def _headers(apid: np.ndarray, seq: np.ndarray, obt: np.ndarray, total_len: np.ndarray):
    """Primary + secondary headers (n, 14) uint8, and the reduced seq and quantised obt."""
    n = apid.size
    seq = np.mod(np.asarray(seq, dtype=np.int64), L.SEQ_MODULO).astype(np.uint16)
    coarse, fine, obt_q = obt_to_cuc(obt)
    h = np.zeros(n, dtype=HEADER_DTYPE)
    h["primary"]["ident"] = (1 << 11) | apid.astype(np.uint16)  # version 0, type 0, sec-header flag 1
    h["primary"]["seq_ctrl"] = (L.SEQ_FLAGS_UNSEGMENTED << 14) | seq
    h["primary"]["data_length"] = total_len - L.PRIMARY_HEADER_LEN - 1
    h["coarse"] = coarse
    h["fine"] = np.stack([(fine >> 16) & 0xFF, (fine >> 8) & 0xFF, fine & 0xFF], axis=1).astype(np.uint8)
    h["layout_version"] = L.LAYOUT_VERSION
    return h.view(np.uint8).reshape(n, L.HEADER_LEN), seq, obt_q


def _assemble(apid, seq, obt, parts: list[tuple[np.ndarray, np.ndarray]]) -> PacketBatch:
    """Concatenate per-packet parts (each (flat bytes, per-packet lengths)), append CRCs -> PacketBatch.

    The first part must be the 14 header bytes; its data-length field is filled in here.
    """
    apid = np.asarray(apid, dtype=np.uint16)
    n = apid.size
    lengths = np.stack([np.broadcast_to(np.asarray(pl, dtype=np.int64), (n,)) for _, pl in parts], axis=1)
    total = lengths.sum(axis=1) + L.CRC_LEN
    if np.any(total > 65542):
        raise ValueError("packet longer than the CCSDS maximum")
    head, seq_r, obt_q = _headers(apid, seq, obt, total)
    start = np.cumsum(total) - total
    buf = np.zeros(int(total.sum()), dtype=np.uint8)
    offs = start.copy()
    for k, (flat, _) in enumerate(parts):
        src = head.ravel() if k == 0 else np.asarray(flat, dtype=np.uint8).ravel()
        buf[segment_index(offs, lengths[:, k])] = src
        offs += lengths[:, k]
    crc = crc16_segments(buf, start, total - L.CRC_LEN)
    buf[offs] = (crc >> 8).astype(np.uint8)
    buf[offs + 1] = (crc & 0xFF).astype(np.uint8)
    return PacketBatch(buf, start, total, apid, seq_r, obt_q)


def _n_of(*arrays_and_ndims) -> int:
    """Number of packets from (array, ndim of one packet's value) pairs; 1 if all are single values."""
    n = {np.shape(a)[0] for a, nd in arrays_and_ndims if np.ndim(a) > nd}
    if len(n) > 1:
        raise ValueError(f"inconsistent numbers of packets: {sorted(n)}")
    return n.pop() if n else 1


def _fixed(apid: int, obt, seq, values: dict[str, np.ndarray]) -> PacketBatch:
    lay = L.FIXED_LAYOUTS[apid]
    n = _n_of((obt, 0), (seq, 0), *((values[f.name], len(f.shape)) for f in lay.fields))
    body = np.zeros(n, dtype=lay.body_dtype)
    for f in lay.fields:
        v = np.asarray(values[f.name], dtype=np.float64)
        if v.shape not in ((n, *f.shape), f.shape):
            raise ValueError(f"{f.name}: shape {v.shape}, expected {(n, *f.shape)}")
        body[f.name] = v
    obt = np.broadcast_to(np.asarray(obt, dtype=np.float64), (n,))
    seq = np.broadcast_to(np.asarray(seq, dtype=np.int64), (n,))
    size = lay.body_dtype.itemsize
    return _assemble(
        np.full(n, apid, dtype=np.uint16),
        seq,
        obt,
        [(None, L.HEADER_LEN), (body.view(np.uint8), size)],
    )


# --- fixed-length kinds ----------------------------------------------------------------------------------


def encode_hk_thermal(obt, seq, temps) -> PacketBatch:
    """temps (n, 9) K: focal-plane rows 0..6, mirror M1, mirror M2."""
    return _fixed(L.APID_HK_THERMAL, obt, seq, {"temps": temps})


def encode_hk_bias(obt, seq, bias) -> PacketBatch:
    """bias (n, 7, 10) ADU: row r, column c (0 = SM, 1..9 = AF1..AF9)."""
    return _fixed(L.APID_HK_BIAS, obt, seq, {"bias": bias})


def encode_hk_power(obt, seq, values) -> PacketBatch:
    """values (n, 8) in the order of layout.HK_POWER_NAMES."""
    return _fixed(L.APID_HK_POWER, obt, seq, {"values": values})


def encode_attitude(obt, seq, quat, spin_phase, precession_phase, sun_longitude) -> PacketBatch:
    """quat (n, 4) x, y, z, w (scalar last), ICRS -> scanning reference frame; angles in rad."""
    return _fixed(
        L.APID_AUX_ATTITUDE,
        obt,
        seq,
        {
            "quat": quat,
            "spin_phase": spin_phase,
            "precession_phase": precession_phase,
            "sun_longitude": sun_longitude,
        },
    )


def encode_timecorr(obt, seq, utc_mission_s, clock_rate) -> PacketBatch:
    """The packet's OBT corresponds to the UTC instant utc_mission_s (mission seconds)."""
    return _fixed(L.APID_AUX_TIMECORR, obt, seq, {"utc": utc_mission_s, "clock_rate": clock_rate})


# --- star-window sample codecs ---------------------------------------------------------------------------


def residuals(x: np.ndarray) -> np.ndarray:
    """Prediction residuals of windows x (m, 9, n), a signed integer array (see layout: PREDICTOR_ORIGIN)."""
    pred = np.empty_like(x)
    pred[:, 0, 0] = L.PREDICTOR_ORIGIN
    pred[:, 0, 1:] = x[:, 0, :-1]
    csum = np.cumsum(x[:, :-1], axis=1)
    pred[:, 1:] = csum // np.arange(1, x.shape[1], dtype=np.int64)[None, :, None]
    return x - pred


def zigzag(r: np.ndarray) -> np.ndarray:
    """Signed residuals -> non-negative: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    return (r << 1) ^ (r >> (8 * r.itemsize - 1))


def _rice_parameters(z: np.ndarray) -> np.ndarray:
    """Per-window Rice parameter k (m, 9) in 0..15 minimising the window's coded size.

    The exact cost is evaluated for three k around log2 of the window's mean, which is where the optimum
    of a Rice code lies for the near-geometric residuals.
    """
    n = z.shape[2]
    mean = z.sum(axis=2, dtype=np.int64) / n
    k0 = np.floor(np.log2(mean + 1.0)).astype(z.dtype)
    best_k = np.zeros(z.shape[:2], dtype=z.dtype)
    best_cost = np.full(z.shape[:2], np.iinfo(np.int64).max)
    top = (1 << L.RICE_K_BITS) - 1
    for d in (-1, 0, 1):
        k = np.clip(k0 + d, 0, top)
        q = z >> k[:, :, None]
        cost = n * (k + 1) + np.minimum(q, L.RICE_Q_ESCAPE).sum(axis=2, dtype=np.int64)
        cost += L.RICE_ESCAPE_BITS * np.count_nonzero(q >= L.RICE_Q_ESCAPE, axis=2)
        better = cost < best_cost
        best_k = np.where(better, k, best_k)
        best_cost = np.where(better, cost, best_cost)
    return best_k


def _bits_msb(values: np.ndarray, width: int) -> np.ndarray:
    """(..., ) non-negative ints -> (..., width) bits, most significant first."""
    size = 2 if width <= 16 else 4
    as_bytes = np.ascontiguousarray(values, dtype=f">u{size}").view(np.uint8).reshape(*values.shape, size)
    return np.unpackbits(as_bytes, axis=-1)[..., 8 * size - width :]


def rice_sizes(x: np.ndarray):
    """Rice coding plan of windows x (m, 9, n): z, k, q and the section sizes in bits per packet."""
    m, w, n = x.shape
    z = zigzag(residuals(x))
    k = _rice_parameters(z)
    q = z >> k[:, :, None]
    u = np.minimum(q, L.RICE_Q_ESCAPE)
    esc = q >= L.RICE_Q_ESCAPE
    hdr = w * L.RICE_K_BITS
    bits_a = n * k.sum(axis=1, dtype=np.int64)
    bits_b = u.sum(axis=(1, 2), dtype=np.int64) + w * n
    bits_c = L.RICE_ESCAPE_BITS * np.count_nonzero(esc, axis=(1, 2)).astype(np.int64)
    total = hdr + bits_a + bits_b + bits_c
    return z, k, q, u, esc, (np.full(m, hdr), bits_a, bits_b, bits_c, total)


def rice_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rice-code windows x (m, 9, n) (int32 or int64) -> (concatenated payloads uint8, payload lengths)."""
    m, nw, n = x.shape
    if m == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    z, k, q, u, esc, (bits_h, bits_a, bits_b, _, total) = rice_sizes(x)
    nbytes = (total + 7) // 8
    base = 8 * (np.cumsum(nbytes) - nbytes)
    # Start from all ones: section B (unary codes: runs of ones, each closed by a zero) then needs only its
    # zeros written; sections H, A and C are written bit by bit, and the padding is cleared at the end.
    bits = np.ones(8 * int(nbytes.sum()), dtype=np.uint8)
    # section H: the nine 4-bit parameters
    bits[(base[:, None] + np.arange(nw * L.RICE_K_BITS)).ravel()] = _bits_msb(k, L.RICE_K_BITS).ravel()
    # section A: the k low bits of every z, window-major; written per value of k (at most 15 passes)
    win_off = (base + bits_h)[:, None] + n * (np.cumsum(k, axis=1) - k)
    for kk in range(1, 1 << L.RICE_K_BITS):
        p, w = np.nonzero(k == kk)
        if p.size:
            pos = win_off[p, w][:, None] + np.arange(n * kk)
            bits[pos] = _bits_msb(z[p, w] & ((1 << kk) - 1), kk).reshape(p.size, n * kk)
    # section B: min(q, 16) ones then a zero per value; only the zeros need writing
    start_b = base + bits_h + bits_a
    local = np.cumsum((u + 1).reshape(m, -1), axis=1, dtype=np.int64)
    bits[(start_b[:, None] + local - 1).ravel()] = 0
    # section C: the full quotient of every escaped value, 17 bits each
    n_esc = esc.sum(axis=(1, 2))
    if n_esc.sum():
        owner = np.repeat(np.arange(m), n_esc)
        rank = np.arange(owner.size) - np.repeat(np.cumsum(n_esc) - n_esc, n_esc)
        eb = L.RICE_ESCAPE_BITS
        pos = (start_b + bits_b)[owner][:, None] + eb * rank[:, None] + np.arange(eb)
        bits[pos] = _bits_msb(q[esc], eb)
    # padding up to the byte boundary: zeros
    pad = 8 * nbytes - total
    pad_pos = (base + total)[:, None] + np.arange(7)
    bits[pad_pos[np.arange(7) < pad[:, None]]] = 0
    return np.packbits(bits), nbytes


_ZSTD_PARAMS = dict(write_content_size=0, write_checksum=0, write_dict_id=0)


def zstd_compressor(level: int = L.ZSTD_LEVEL) -> zstandard.ZstdCompressor:
    params = zstandard.ZstdCompressionParameters.from_level(
        level, format=zstandard.FORMAT_ZSTD1_MAGICLESS, **_ZSTD_PARAMS
    )
    return zstandard.ZstdCompressor(compression_params=params)


def shuffle_bytes(v: np.ndarray) -> np.ndarray:
    """(m, N) uint16 -> (m, 2N) uint8: the N low bytes, then the N high bytes of each row."""
    return np.concatenate([(v & 0xFF).astype(np.uint8), (v >> 8).astype(np.uint8)], axis=1)


def zstd_filter(x: np.ndarray) -> np.ndarray:
    """Windows (m, 9, n) -> (m, 18n) bytes given to zstd: shuffled zigzag of the residuals mod 2**16."""
    r16 = (residuals(x) & 0xFFFF).astype(np.uint16).view(np.int16).astype(np.int32)
    z = ((r16 << 1) ^ (r16 >> 15)).astype(np.uint16)
    return shuffle_bytes(z.reshape(x.shape[0], -1))


def zstd_compress_rows(rows: np.ndarray, compressor=None) -> tuple[np.ndarray, np.ndarray]:
    """Compress each row of rows (m, B) uint8 into its own frame, in one multi_compress_to_buffer call."""
    m, b = rows.shape
    if m == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    rows = np.ascontiguousarray(rows)
    segs = np.stack([np.arange(m, dtype=np.uint64) * b, np.full(m, b, dtype=np.uint64)], axis=1)
    coll = (compressor or zstd_compressor()).multi_compress_to_buffer(
        zstandard.BufferWithSegments(rows.tobytes(), segs.tobytes())
    )
    # join and map(len) iterate the collection in C: no Python bytecode per packet
    flat = np.frombuffer(b"".join(coll), dtype=np.uint8)
    return flat, np.fromiter(map(len, coll), dtype=np.int64, count=m)


def compress_windows(samples, n_samples, codec: int = L.DEFAULT_CODEC):
    """Samples (n, 9, 18) and n_samples (n,) -> (codec per packet, concatenated payloads, lengths)."""
    samples = np.asarray(samples)
    ns = np.asarray(n_samples, dtype=np.int64)
    n = ns.size
    if codec not in L.CODEC_NAMES:
        raise ValueError(f"unknown codec {codec}")
    codecs = np.full(n, codec, dtype=np.uint8)
    lengths = np.zeros(n, dtype=np.int64)
    pieces: list[np.ndarray] = []
    src_start = np.zeros(n, dtype=np.int64)
    offset = 0
    for nn in L.WINDOW_LENGTHS:
        idx = np.flatnonzero(ns == nn)
        if idx.size == 0:
            continue
        x = samples[idx, :, :nn].astype(np.int32)
        raw = x.astype(">u2").view(np.uint8).reshape(idx.size, -1)
        if codec == L.CODEC_RICE:
            flat, ln = rice_encode(x)
        elif codec == L.CODEC_ZSTD:
            flat, ln = zstd_compress_rows(zstd_filter(x))
        else:
            flat, ln = raw.ravel(), np.full(idx.size, raw.shape[1], dtype=np.int64)
        st = np.cumsum(ln) - ln
        fallback = ln > raw.shape[1]  # a payload is never larger than the samples themselves
        if np.any(fallback):
            codecs[idx[fallback]] = L.CODEC_RAW
            st[fallback] = flat.size + raw.shape[1] * np.arange(int(fallback.sum()))
            ln[fallback] = raw.shape[1]
            flat = np.concatenate([flat, raw[fallback].ravel()])
        pieces.append(flat)
        st += offset
        offset += flat.size
        src_start[idx] = st
        lengths[idx] = ln
    src = np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)
    return codecs, src[segment_index(src_start, lengths)], lengths


# --- star packets ----------------------------------------------------------------------------------------


def _check_range(name: str, v: np.ndarray, lo: int, hi: int) -> None:
    if v.size and (np.min(v) < lo or np.max(v) > hi):
        raise ValueError(f"{name} out of range [{lo}, {hi}]")


def encode_star(
    obt,
    seq,
    fov,
    row,
    mag_class,
    ac_pixel,
    sm_flux,
    gate,
    flags,
    al_offset,
    samples,
    n_samples,
    codec: int = L.DEFAULT_CODEC,
) -> PacketBatch:
    """Star packets: one per source transit, nine AF windows of n_samples (12 or 18) samples each.

    obt is the on-board time at which sample 0 of the AF1 window is read; window k (1..9) starts at
    obt + (k-1) CCD_CROSSING_S + al_offset[k-1] TDI_PERIOD_S. samples (n, 9, 18) uint16: only the first
    n_samples columns are sent.
    """
    ns = np.atleast_1d(np.asarray(n_samples, dtype=np.int64))
    n = ns.size
    samples = np.asarray(samples)
    al_offset = np.asarray(al_offset)
    if samples.shape != (n, L.N_WINDOWS, L.MAX_SAMPLES):
        raise ValueError(f"samples shape {samples.shape}, expected {(n, L.N_WINDOWS, L.MAX_SAMPLES)}")
    if al_offset.shape != (n, L.N_WINDOWS):
        raise ValueError(f"al_offset shape {al_offset.shape}, expected {(n, L.N_WINDOWS)}")
    if not np.all(np.isin(ns, L.WINDOW_LENGTHS)):
        raise ValueError(f"n_samples must be one of {L.WINDOW_LENGTHS}")
    _check_range("samples", samples, 0, 65535)
    _check_range("al_offset", al_offset, -128, 127)

    def field(v, lo, hi, name):
        a = np.broadcast_to(np.asarray(v, dtype=np.int64), (n,))
        _check_range(name, a, lo, hi)
        return a

    apid = np.asarray(
        L.star_apid(field(mag_class, 0, 2, "mag_class"), field(fov, 0, 1, "fov"), field(row, 0, 6, "row")),
        dtype=np.uint16,
    )
    fixed = np.zeros(n, dtype=L.STAR_FIXED_DTYPE)
    fixed["ac_pixel"] = field(ac_pixel, 0, 65535, "ac_pixel")
    fixed["sm_flux"] = field(sm_flux, 0, 2**32 - 1, "sm_flux")
    fixed["gate"] = field(gate, 0, L.MAX_GATE, "gate")
    fixed["flags"] = field(flags, 0, 255, "flags")
    fixed["n_samples"] = ns
    fixed["n_windows"] = L.N_WINDOWS
    fixed["al_offset"] = al_offset.astype(np.int8)
    codecs, payload, plen = compress_windows(samples, ns, codec)
    fixed["codec"] = codecs
    fixed["payload_length"] = plen
    return _assemble(
        apid,
        np.broadcast_to(np.asarray(seq, dtype=np.int64), (n,)),
        np.broadcast_to(np.asarray(obt, dtype=np.float64), (n,)),
        [(None, L.HEADER_LEN), (fixed.view(np.uint8), L.STAR_FIXED_LEN), (payload, plen)],
    )
