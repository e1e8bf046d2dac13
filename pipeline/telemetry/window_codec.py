"""Star-window sample codecs: the payload of a star packet, both ways.

The nine AF windows of a transit, (m, 9, n) uint16 samples with n = 12 or 18, become one payload per
packet, named by the packet's codec byte (layout.CODEC_*):
- CODEC_ZSTD (the default, layout.DEFAULT_CODEC): prediction residuals mod 2**16, zigzagged and
  byte-shuffled, one magicless zstd frame per packet, through python-zstandard's batch APIs
  (ZstdCompressor.multi_compress_to_buffer, ZstdDecompressor.multi_decompress_to_buffer);
- CODEC_RICE: the same residuals, zigzagged and Rice-coded with one parameter per window (numpy);
- CODEC_RAW: the samples as they are; compress_windows falls back to it for a window set that would not
  shrink.
compress_windows and decompress_windows work on many packets at once (no Python loop per packet); encode.py
and decode.py frame and unframe the packets around them. docs/telemetry.md gives the bit layouts and the
measured ratios.
"""

from __future__ import annotations

import os

import numpy as np
import zstandard

from pipeline.telemetry import layout as L
from pipeline.telemetry.batch import segment_index

ZSTD_MAGIC = np.frombuffer(b"\x28\xb5\x2f\xfd", dtype=np.uint8)
RICE_CHUNK = 8192  # packets per Rice decoding chunk (bounds the memory of the bit arrays)
# Batch decompression runs on this many threads (python-zstandard's own, outside the GIL) from this many
# frames up: a whole pass decompresses about 1.8x faster on two idle cores.
ZSTD_THREADS = min(os.cpu_count() or 1, 4)
ZSTD_THREADS_FROM = 4096


def _starts(lengths: np.ndarray) -> np.ndarray:
    """Start of each segment when segments of these lengths are laid back to back."""
    return np.cumsum(lengths) - lengths


def _no_payloads() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.uint8), np.zeros(0, np.int64)


# --- prediction residuals (zstd and Rice) ----------------------------------------------------------------


def residuals(x: np.ndarray) -> np.ndarray:
    """Prediction residuals of windows x (m, 9, n), a signed integer array (see layout: PREDICTOR_ORIGIN)."""
    pred = np.empty_like(x)
    pred[:, 0, 0] = L.PREDICTOR_ORIGIN
    pred[:, 0, 1:] = x[:, 0, :-1]
    csum = np.cumsum(x[:, :-1], axis=1)
    pred[:, 1:] = csum // np.arange(1, x.shape[1], dtype=np.int64)[None, :, None]
    return x - pred


def reconstruct(r: np.ndarray, modulo: bool = False) -> np.ndarray:
    """Windows (m, 9, n) from prediction residuals (inverse of residuals).

    With modulo=True the residuals are known only mod 2**16 (the zstd codec); the result is then exact
    for samples in 0..65535 because every prediction is computed from already exact samples.
    """
    mask = 0xFFFF if modulo else -1
    x = np.empty_like(r)
    x[:, 0] = (L.PREDICTOR_ORIGIN + np.cumsum(r[:, 0], axis=1)) & mask
    running = x[:, 0].copy()
    for w in range(1, r.shape[1]):
        x[:, w] = (running // w + r[:, w]) & mask
        running += x[:, w]
    return x


def zigzag(r: np.ndarray) -> np.ndarray:
    """Signed residuals -> non-negative: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    return (r << 1) ^ (r >> (8 * r.itemsize - 1))


def unzigzag(z: np.ndarray) -> np.ndarray:
    """Inverse of zigzag, for a signed integer array z."""
    return (z >> 1) ^ -(z & 1)


# --- codec 2: Rice ---------------------------------------------------------------------------------------
# Bit stream, MSB first: H (nine 4-bit k), A (k low bits of every z), B (min(q, 16) ones and a zero per z),
# C (17-bit q of every escaped z), zero padding to a byte.


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


def _read_bits(pb: np.ndarray, pos: np.ndarray, width) -> np.ndarray:
    """Unsigned fields of `width` (<= 17) bits, MSB first, at bit positions pos of the padded bytes pb."""
    byte = np.minimum(pos >> 3, pb.size - 3)
    word = (pb[byte].astype(np.int64) << 16) | (pb[byte + 1].astype(np.int64) << 8) | pb[byte + 2]
    return (word >> (24 - (pos & 7) - width)) & ((np.int64(1) << width) - 1)


def _window_starts(start_a: np.ndarray, k: np.ndarray, n: int) -> np.ndarray:
    """Bit position (m, 9) of each window's low bits in section A, which starts at start_a (m,)."""
    return start_a[:, None] + n * (np.cumsum(k, axis=1) - k)


def _escape_starts(start_c: np.ndarray, n_esc: np.ndarray) -> np.ndarray:
    """Bit positions of all escape fields, packet by packet, given where section C starts in each packet."""
    owner = np.repeat(np.arange(n_esc.size), n_esc)
    rank = np.arange(owner.size) - np.repeat(_starts(n_esc), n_esc)
    return start_c[owner] + L.RICE_ESCAPE_BITS * rank


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
        return _no_payloads()
    z, k, q, u, esc, (bits_h, bits_a, bits_b, _, total) = rice_sizes(x)
    nbytes = (total + 7) // 8
    base = 8 * _starts(nbytes)
    # Start from all ones: section B (unary codes: runs of ones, each closed by a zero) then needs only its
    # zeros written; sections H, A and C are written bit by bit, and the padding is cleared at the end.
    bits = np.ones(8 * int(nbytes.sum()), dtype=np.uint8)
    # section H: the nine 4-bit parameters
    bits[(base[:, None] + np.arange(nw * L.RICE_K_BITS)).ravel()] = _bits_msb(k, L.RICE_K_BITS).ravel()
    # section A: the k low bits of every z, window-major; written per value of k (at most 15 passes)
    win_off = _window_starts(base + bits_h, k, n)
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
        pos = _escape_starts(start_b + bits_b, n_esc)[:, None] + np.arange(L.RICE_ESCAPE_BITS)
        bits[pos] = _bits_msb(q[esc], L.RICE_ESCAPE_BITS)
    # padding up to the byte boundary: zeros
    pad = 8 * nbytes - total
    pad_pos = (base + total)[:, None] + np.arange(7)
    bits[pad_pos[np.arange(7) < pad[:, None]]] = 0
    return np.packbits(bits), nbytes


_RICE_ERRORS = {
    1: "rice: payload shorter than its parameters declare",
    2: "rice: unterminated unary section",
    3: "rice: unary code longer than the escape",
    4: "rice: escape section runs past the payload",
    5: "rice: payload longer than its content",
    6: "rice: nonzero padding",
    7: "rice: sample out of range",
}


def _rice_decode_chunk(pbuf: np.ndarray, plen: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    m = plen.size
    nw = L.N_WINDOWS
    big_n = nw * n
    kb = L.RICE_K_BITS
    eb = L.RICE_ESCAPE_BITS
    pb = np.concatenate([pbuf, np.zeros(4, np.uint8)])
    bits = np.unpackbits(pbuf)
    base = 8 * _starts(plen)
    end = base + 8 * plen
    err = np.zeros(m, dtype=np.int8)

    def flag(cond, code):
        err[(err == 0) & cond] = code

    flag(8 * plen < nw * kb + big_n, 1)
    k = _read_bits(pb, base[:, None] + kb * np.arange(nw), kb)  # (m, 9)
    start_b = base + nw * kb + n * k.sum(axis=1)
    flag(start_b + big_n > end, 1)
    # section A: the k low bits of each value
    win_off = _window_starts(base + nw * kb, k, n)
    low = _read_bits(pb, win_off[:, :, None] + np.arange(n) * k[:, :, None], k[:, :, None])
    # section B: the first big_n zeros at or after start_b close the unary codes
    zero_pos = np.flatnonzero(bits == 0)
    i0 = np.searchsorted(zero_pos, start_b)
    idx = i0[:, None] + np.arange(big_n)
    have = idx[:, -1] < zero_pos.size
    term = zero_pos[np.minimum(idx, zero_pos.size - 1)] if zero_pos.size else np.zeros_like(idx)
    flag(~have | (term[:, -1] >= end), 2)
    u = np.diff(term, axis=1, prepend=(start_b - 1)[:, None]) - 1
    flag((u > L.RICE_Q_ESCAPE).any(axis=1), 3)
    esc = u == L.RICE_Q_ESCAPE
    n_esc = esc.sum(axis=1)
    start_c = term[:, -1] + 1
    stop = start_c + eb * n_esc
    flag(stop > end, 4)
    flag(end - stop >= 8, 5)
    flag(_read_bits(pb, stop, np.clip(end - stop, 0, 7)) != 0, 6)
    # section C: escaped quotients
    q = u
    if n_esc.sum():
        q[esc] = _read_bits(pb, _escape_starts(start_c, n_esc), eb)
    x = reconstruct(unzigzag((q.reshape(m, nw, n) << k[:, :, None]) | low))
    flag(((x < 0) | (x > 65535)).any(axis=(1, 2)), 7)
    return x, err


def rice_decode(pbuf: np.ndarray, plen: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated Rice payloads (lengths plen) of windows of n samples -> (x (m, 9, n), error code)."""
    m = plen.size
    x = np.zeros((m, L.N_WINDOWS, n), dtype=np.int64)
    err = np.zeros(m, dtype=np.int8)
    starts = _starts(plen)
    for a in range(0, m, RICE_CHUNK):
        b = min(a + RICE_CHUNK, m)
        lo, hi = int(starts[a]), int(starts[b - 1] + plen[b - 1])
        x[a:b], err[a:b] = _rice_decode_chunk(pbuf[lo:hi], plen[a:b], n)
    return x, err


# --- codec 1: zstd ---------------------------------------------------------------------------------------

_ZSTD_PARAMS = dict(write_content_size=0, write_checksum=0, write_dict_id=0)


def zstd_compressor(level: int = L.ZSTD_LEVEL) -> zstandard.ZstdCompressor:
    params = zstandard.ZstdCompressionParameters.from_level(
        level, format=zstandard.FORMAT_ZSTD1_MAGICLESS, **_ZSTD_PARAMS
    )
    return zstandard.ZstdCompressor(compression_params=params)


def shuffle_bytes(v: np.ndarray) -> np.ndarray:
    """(m, N) uint16 -> (m, 2N) uint8: the N low bytes, then the N high bytes of each row."""
    return np.concatenate([(v & 0xFF).astype(np.uint8), (v >> 8).astype(np.uint8)], axis=1)


def unshuffle_bytes(rows: np.ndarray) -> np.ndarray:
    """(m, 2N) uint8 -> (m, N) int64: inverse of shuffle_bytes."""
    half = rows.shape[1] // 2
    return rows[:, :half].astype(np.int64) | (rows[:, half:].astype(np.int64) << 8)


def zstd_filter(x: np.ndarray) -> np.ndarray:
    """Windows (m, 9, n) -> (m, 18n) bytes given to zstd: shuffled zigzag of the residuals mod 2**16."""
    r16 = (residuals(x) & 0xFFFF).astype(np.uint16).view(np.int16)
    return shuffle_bytes(zigzag(r16.astype(np.int32)).astype(np.uint16).reshape(x.shape[0], -1))


def zstd_unfilter(rows: np.ndarray, n: int) -> np.ndarray:
    """Inverse of zstd_filter: (m, 18n) bytes -> windows (m, 9, n) (int32; a view of a window-major array).

    The same arithmetic as unshuffle_bytes, unzigzag and reconstruct(modulo=True), in 16- and 32-bit
    integers (every value fits: residuals mod 2**16, sums of nine samples below 2**20), with the windows
    outermost so that each step runs over contiguous memory.
    """
    m, b = rows.shape
    half = b // 2
    z = np.empty((m, half), dtype="<u2")
    z8 = z.view(np.uint8).reshape(m, half, 2)
    z8[:, :, 0] = rows[:, :half]
    z8[:, :, 1] = rows[:, half:]
    r = (z >> 1) ^ -(z & 1)  # unzigzag mod 2**16: -(z & 1) is 0 or 0xFFFF in uint16
    r = np.ascontiguousarray(r.reshape(m, L.N_WINDOWS, n).transpose(1, 0, 2))
    x = np.empty((L.N_WINDOWS, m, n), dtype=np.int32)
    np.cumsum(r[0], axis=1, dtype=np.int32, out=x[0])
    x[0] += L.PREDICTOR_ORIGIN
    x[0] &= 0xFFFF
    running = x[0].copy()
    for w in range(1, L.N_WINDOWS):
        np.floor_divide(running, w, out=x[w])
        x[w] += r[w]
        x[w] &= 0xFFFF
        running += x[w]
    return x.transpose(1, 0, 2)


def zstd_compress_rows(rows: np.ndarray, compressor=None) -> tuple[np.ndarray, np.ndarray]:
    """Compress each row of rows (m, B) uint8 into its own frame, in one multi_compress_to_buffer call."""
    m, b = rows.shape
    if m == 0:
        return _no_payloads()
    rows = np.ascontiguousarray(rows)
    segs = np.stack([np.arange(m, dtype=np.uint64) * b, np.full(m, b, dtype=np.uint64)], axis=1)
    coll = (compressor or zstd_compressor()).multi_compress_to_buffer(
        zstandard.BufferWithSegments(rows.tobytes(), segs.tobytes())
    )
    # join and map(len) iterate the collection in C: no Python bytecode per packet. (The ignores: zstandard's
    # stubs declare neither that the collection iterates, by the sequence protocol, nor that its segments
    # are buffers.)
    flat = np.frombuffer(b"".join(coll), dtype=np.uint8)  # type: ignore[arg-type]
    return flat, np.fromiter(map(len, coll), dtype=np.int64, count=m)  # type: ignore[arg-type]


def _zstd_frames(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
    """The frames buf[starts[i]:+lengths[i]] with the zstd magic number in front -> (data, frame segments).

    When the 4 bytes before every frame belong to no frame (payloads inside their packets: the fixed
    fields precede them), the magic numbers are written there in one copy of the part of buf the frames
    span; otherwise the frames are gathered into a new buffer behind their magic numbers.
    """
    m = starts.size
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], (starts + lengths)[order]
    if s[0] >= 4 and np.all(s[1:] - 4 >= e[:-1]):
        lo, hi = int(s[0]) - 4, int(e.max())  # a copy of the part of buf the frames span
        data = np.array(buf[lo:hi], dtype=np.uint8, copy=True)
        data[(starts - 4 - lo)[:, None] + np.arange(4)] = ZSTD_MAGIC
        return data, np.stack([starts - 4 - lo, lengths + 4], axis=1).astype(np.uint64)
    flen = lengths + 4
    fstart = _starts(flen)
    data = np.empty(int(flen.sum()), dtype=np.uint8)
    data[(fstart[:, None] + np.arange(4)).ravel()] = np.tile(ZSTD_MAGIC, m)
    data[segment_index(fstart + 4, lengths)] = buf[segment_index(starts, lengths)]
    return data, np.stack([fstart, flen], axis=1).astype(np.uint64)


def zstd_decompress_segments(buf: np.ndarray, starts, lengths, size: int, keep: bool = True):
    """Decompress magicless zstd frames buf[starts[i]:+lengths[i]], each to exactly `size` bytes.

    One ZstdDecompressor.multi_decompress_to_buffer call for the lot. Two quirks of python-zstandard 0.25
    are worked around: that call ignores the magicless format setting (its worker contexts are fresh), so
    the 4-byte magic number is put back in front of each frame first; and decompressed_sizes together with
    a BufferWithSegmentsCollection fails its size check, so the input is always one BufferWithSegments.
    A batch that fails is split in halves until the bad frames are isolated.
    -> (out (m, size) uint8, ok (m,) bool); with keep=False only checked: (None, ok)
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    m = starts.size
    out = np.zeros((m, size), dtype=np.uint8) if keep else None
    ok = np.ones(m, dtype=bool)
    if m == 0:
        return out, ok
    data, segs = _zstd_frames(np.asarray(buf), starts, lengths)
    dctx = zstandard.ZstdDecompressor()

    def run(idx: np.ndarray) -> None:
        try:
            coll = dctx.multi_decompress_to_buffer(
                zstandard.BufferWithSegments(data, segs[idx].tobytes()),
                decompressed_sizes=np.full(idx.size, size, dtype=np.uint64).tobytes(),
                threads=ZSTD_THREADS if idx.size >= ZSTD_THREADS_FROM else 0,
            )
            if out is not None:
                # the ignore: zstandard's stubs miss the collection's iteration (see zstd_compress_rows)
                flat = np.frombuffer(b"".join(coll), dtype=np.uint8)  # type: ignore[arg-type]
                out[idx] = flat.reshape(idx.size, size)
        except (zstandard.ZstdError, ValueError):
            if idx.size == 1:
                ok[idx] = False
            else:
                run(idx[: idx.size // 2])
                run(idx[idx.size // 2 :])

    run(np.arange(m))
    return out, ok


# --- all codecs, many packets ----------------------------------------------------------------------------


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
        st = _starts(ln)
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


def _decompress_raw(buf, starts, lengths, n, keep=True):
    size = 2 * L.N_WINDOWS * n
    bad = lengths != size
    x = None
    if keep:
        x = np.zeros((starts.size, L.N_WINDOWS, n), dtype=np.int64)
        rows = buf[starts[~bad][:, None] + np.arange(size)]
        x[~bad] = rows.view(">u2").reshape(-1, L.N_WINDOWS, n)
    return x, {int(i): f"raw payload of {lengths[i]} bytes, expected {size}" for i in np.flatnonzero(bad)}


def _decompress_zstd(buf, starts, lengths, n, keep=True):
    size = 2 * L.N_WINDOWS * n
    rows, ok = zstd_decompress_segments(buf, starts, lengths, size, keep=keep)
    x = None
    if keep and ok.all():
        x = zstd_unfilter(rows, n)
    elif keep:
        x = np.zeros((starts.size, L.N_WINDOWS, n), dtype=np.int32)
        x[ok] = zstd_unfilter(rows[ok], n)
    message = f"zstd payload does not decompress to {size} bytes"
    return x, {int(i): message for i in np.flatnonzero(~ok)}


def _decompress_rice(buf, starts, lengths, n, keep=True):
    x, err = rice_decode(buf[segment_index(starts, lengths)], lengths, n)  # the errors need the samples
    return x, {int(i): _RICE_ERRORS[int(err[i])] for i in np.flatnonzero(err)}


_DECOMPRESS = {L.CODEC_RAW: _decompress_raw, L.CODEC_ZSTD: _decompress_zstd, L.CODEC_RICE: _decompress_rice}


def decompress_windows(buf: np.ndarray, starts, lengths, codec, n_samples, samples: bool = True):
    """Payloads buf[starts[i] : starts[i] + lengths[i]] written with codec[i] -> (samples, reasons).

    buf is uint8; codec and n_samples (per packet) must be known codecs and window lengths (the caller
    checks the fixed fields). samples (m, 9, 18) uint16, zero beyond n_samples and for the payloads that
    do not decode; reasons {packet index: why} for those (see docs/telemetry.md: problem reasons).
    With samples=False the payloads are only checked, with the same reasons, and None stands for the
    samples (zstd payloads are decompressed but not unfiltered, raw ones only measured).
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    codec = np.asarray(codec, dtype=np.int64)
    ns = np.asarray(n_samples, dtype=np.int64)
    if not (np.all(np.isin(codec, list(L.CODEC_NAMES))) and np.all(np.isin(ns, L.WINDOW_LENGTHS))):
        raise ValueError("decompress_windows: unknown codec or window length")
    out = np.zeros((starts.size, L.N_WINDOWS, L.MAX_SAMPLES), dtype=np.uint16) if samples else None
    reasons: dict[int, str] = {}
    for nn in L.WINDOW_LENGTHS:
        for c, decompress in _DECOMPRESS.items():
            idx = np.flatnonzero((ns == nn) & (codec == c))
            if idx.size == 0:
                continue
            x, bad = decompress(buf, starts[idx], lengths[idx], nn, keep=samples)
            if out is not None and not bad:
                out[idx, :, :nn] = x
            elif out is not None:
                ok = np.ones(idx.size, dtype=bool)
                ok[list(bad)] = False
                out[idx[ok], :, :nn] = x[ok]
            reasons.update({int(idx[i]): why for i, why in bad.items()})
    return out, reasons
