"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor), scalar and vectorised.

The vectorised form computes the CRCs of many variable-length segments of one buffer with numpy. It
consumes two bytes per step through a 65536-entry table: for a 16-bit register, feeding 16 message bits
is exactly  crc' = T16[crc ^ word]  with  T16[v] = v * x^16 mod P.  Segments are sorted by length
(longest first) so that step j only touches the prefix of segments that are still that long.
"""

from __future__ import annotations

import numpy as np

POLY = 0x1021
INIT = 0xFFFF


def _table8() -> np.ndarray:
    """T8[b] = (b << 8) * x^8 mod P: the register after shifting one byte b in from a zero register."""
    crc = np.arange(256, dtype=np.uint32) << 8
    for _ in range(8):
        crc = np.where(crc & 0x8000, (crc << 1) ^ POLY, crc << 1) & 0xFFFF
    return crc.astype(np.uint16)


TABLE8 = _table8()
# T16[v] for v = hi << 8 | lo: shift the high byte through (T8[hi] in the top byte), then the low byte.
_hi = np.arange(65536, dtype=np.uint32) >> 8
_lo = np.arange(65536, dtype=np.uint32) & 0xFF
_t = TABLE8[_hi].astype(np.uint32)
TABLE16 = ((((_t << 8) & 0xFFFF) ^ TABLE8[(_t >> 8) ^ _lo]) & 0xFFFF).astype(np.uint16)
del _hi, _lo, _t
_TABLE8_LIST = TABLE8.tolist()


def crc16(data: bytes | bytearray | memoryview, init: int = INIT) -> int:
    """CRC-16/CCITT-FALSE of data (check value 0x29B1 for b"123456789")."""
    crc = init
    table = _TABLE8_LIST
    for b in bytes(data):
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ b]
    return crc


CRC_BLOCK = 1 << 14  # segments per block: each block's bytes stay in the cache while its steps run


def crc16_segments(buf: np.ndarray, starts, lengths) -> np.ndarray:
    """CRC of each segment buf[starts[i] : starts[i] + lengths[i]] -> uint16 array (no per-segment loop)."""
    buf = np.asarray(buf)
    if buf.dtype != np.uint8:
        raise TypeError("crc16_segments: buf must be uint8")
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    n = starts.size
    if n == 0:
        return np.zeros(0, dtype=np.uint16)
    if np.any(lengths < 0) or np.any(starts < 0) or np.any(starts + lengths > buf.size):
        raise ValueError("crc16_segments: segment outside the buffer")
    # the big-endian 16-bit word at every byte offset of the range the segments cover
    lo, hi = int(starts.min()), int((starts + lengths).max())
    words = np.zeros(max(hi - lo, 1), dtype=np.uint16)
    np.left_shift(buf[lo : hi - 1], 8, out=words[: hi - lo - 1], dtype=np.uint16)
    words[: hi - lo - 1] |= buf[lo + 1 : hi]
    out = np.empty(n, dtype=np.uint16)
    in_file_order = np.argsort(starts, kind="stable")
    for a in range(0, n, CRC_BLOCK):
        sel = in_file_order[a : a + CRC_BLOCK]
        out[sel] = _crc_block(buf, words, starts[sel] - lo, lengths[sel], lo)
    return out


def _crc_block(buf: np.ndarray, words: np.ndarray, starts: np.ndarray, lengths: np.ndarray, lo: int):
    """crc16_segments of one block of segments, starts relative to lo (the start of words)."""
    n = starts.size
    order = np.argsort(-lengths, kind="stable")
    pos = starts[order]
    ln = lengths[order]
    crc = np.full(n, INIT, dtype=np.uint16)
    # active[j] = number of segments with at least 2j+2 bytes (a prefix, as ln is sorted descending)
    n_pairs = int(ln[0]) // 2
    active = np.searchsorted(-ln, -(2 * np.arange(n_pairs, dtype=np.int64) + 2), side="right")
    word = np.empty(n, dtype=np.uint16)
    for j in range(n_pairs):
        m = int(active[j])
        c = crc[:m]
        np.take(words, pos[:m], out=word[:m])
        c ^= word[:m]
        np.take(TABLE16, c, out=c)
        pos[:m] += 2
    odd = np.flatnonzero(ln & 1)
    if odd.size:
        last = buf[lo + starts[order][odd] + ln[odd] - 1].astype(np.uint16)
        c = crc[odd]
        crc[odd] = ((c << 8) & 0xFFFF) ^ TABLE8[(c >> 8) ^ last]
    out = np.empty(n, dtype=np.uint16)
    out[order] = crc
    return out
