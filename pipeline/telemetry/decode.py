"""Packet decoders: one packet strictly (decode_packet), or a whole pass with resynchronisation (decode_pass).

decode_pass works on all packets at once with numpy. Framing: every byte offset is tested for a plausible
primary header (version/type/secondary-header bits, known APID, unsegmented, a data length that the APID
allows and that fits the buffer); the CRC of every candidate is computed in one crc16_segments call; the
CRC-valid candidates are accepted in file order, dropping any that starts inside an earlier accepted one.
Every byte not in an accepted packet is accounted as a Problem. docs/telemetry.md has the details.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from functools import cache

import ccsdspy
import numpy as np

from pipeline.telemetry import layout as L
from pipeline.telemetry.batch import segment_index
from pipeline.telemetry.crc import crc16, crc16_segments
from pipeline.telemetry.errors import TelemetryError
from pipeline.telemetry.window_codec import decompress_windows

PACKET_DTYPE = np.dtype([("offset", "i8"), ("length", "i4"), ("apid", "u2"), ("seq", "u2"), ("obt", "f8")])


@dataclass(frozen=True)
class Problem:
    """A byte range of the input that is not an accepted packet. apid/seq are None when unknown."""

    offset: int
    length: int
    reason: str
    apid: int | None = None
    seq: int | None = None


@dataclass
class DecodedPass:
    packets: np.ndarray  # PACKET_DTYPE, accepted packets in file order
    problems: list[Problem]
    star: dict[str, np.ndarray]
    attitude: dict[str, np.ndarray]
    timecorr: dict[str, np.ndarray]
    hk_thermal: dict[str, np.ndarray]
    hk_bias: dict[str, np.ndarray]
    hk_power: dict[str, np.ndarray]
    n_bytes: int = 0

    @property
    def bytes_accounted(self) -> int:
        """Bytes in accepted packets plus bytes in problems (equals n_bytes by construction)."""
        return int(self.packets["length"].sum()) + sum(p.length for p in self.problems)


# --- star packets ----------------------------------------------------------------------------------------


def _decode_star(arr: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, samples: bool = True):
    """Star packets at offsets -> (fields dict, samples (m, 9, 18) uint16, {index: reason} of bad ones).

    With samples=False the payloads are only checked and the samples are None.
    """
    m = offsets.size
    fixed = arr[(offsets + L.HEADER_LEN)[:, None] + np.arange(L.STAR_FIXED_LEN)]
    fx = fixed.copy().view(L.STAR_FIXED_DTYPE).reshape(m)
    ns = fx["n_samples"].astype(np.int64)
    plen = fx["payload_length"].astype(np.int64)
    codec = fx["codec"].astype(np.int64)
    room = lengths - L.HEADER_LEN - L.STAR_FIXED_LEN - L.CRC_LEN
    reasons: dict[int, str] = {}

    def fail(where: np.ndarray, make) -> None:
        """Record a reason for the packets at where (a mask over m, or indices), keeping the first one."""
        where = np.flatnonzero(where) if where.dtype == bool else where
        for i in where:
            if int(i) not in reasons:
                reasons[int(i)] = "bad_payload: " + make(i)

    fail(fx["n_windows"] != L.N_WINDOWS, lambda i: f"n_windows {fx['n_windows'][i]}, expected {L.N_WINDOWS}")
    fail(~np.isin(ns, L.WINDOW_LENGTHS), lambda i: f"n_samples {ns[i]}, expected 12 or 18")
    fail(plen != room, lambda i: f"payload_length {plen[i]}, packet holds {room[i]} bytes")
    fail(~np.isin(codec, list(L.CODEC_NAMES)), lambda i: f"unknown codec {codec[i]}")
    fail(fx["gate"] > L.MAX_GATE, lambda i: f"gate {fx['gate'][i]} above {L.MAX_GATE}")
    good = np.ones(m, dtype=bool)
    good[list(reasons)] = False
    idx = np.flatnonzero(good)
    pstart = offsets[idx] + L.HEADER_LEN + L.STAR_FIXED_LEN
    x, bad = decompress_windows(arr, pstart, plen[idx], codec[idx], ns[idx], samples=samples)
    if x is None or idx.size == m:
        out = x
    else:
        out = np.zeros((m, L.N_WINDOWS, L.MAX_SAMPLES), dtype=np.uint16)
        out[idx] = x
    reasons.update({int(idx[i]): "bad_payload: " + why for i, why in bad.items()})
    mag_class, fov, row = (np.asarray(v) for v in L.parse_star_apid(_apid_at(arr, offsets)))
    fields = {
        "fov": fov.astype(np.int8),
        "row": row.astype(np.int8),
        "mag_class": mag_class.astype(np.int8),
        "ac_pixel": fx["ac_pixel"].astype(np.uint16),
        "sm_flux": fx["sm_flux"].astype(np.uint32),
        "gate": fx["gate"].astype(np.uint8),
        "flags": fx["flags"].astype(np.uint8),
        "n_samples": fx["n_samples"].astype(np.uint8),
        "al_offset": fx["al_offset"].astype(np.int8),
        "codec": fx["codec"].astype(np.uint8),
    }
    return fields, out, reasons


# --- fixed-length kinds through ccsdspy ------------------------------------------------------------------


@cache
def ccsds_definition(apid: int) -> ccsdspy.FixedLength:
    """The ccsdspy definition of a fixed-length packet kind (secondary header, body fields, CRC)."""
    lay = L.FIXED_LAYOUTS[apid]
    fields = [
        ccsdspy.PacketField("obt_coarse", "uint", 32),
        ccsdspy.PacketField("obt_fine", "uint", 24),
        ccsdspy.PacketField("layout_version", "uint", 8),
    ]
    for f in lay.fields:
        bits = 8 * np.dtype(f.dtype).itemsize
        if f.shape:
            fields.append(ccsdspy.PacketArray(f.name, "float", bits, array_shape=f.shape))
        else:
            fields.append(ccsdspy.PacketField(f.name, "float", bits))
    fields.append(ccsdspy.PacketField("crc", "uint", 16))
    return ccsdspy.FixedLength(fields, apid=apid, name=lay.key)


def _empty_fixed(lay: L.FixedLayout) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {
        "packet": np.zeros(0, np.int64),
        "obt": np.zeros(0),
        "seq": np.zeros(0, np.uint16),
    }
    for f in lay.fields:
        out[f.name] = np.zeros((0, *f.shape))
    return out


def _decode_fixed(arr: np.ndarray, offsets: np.ndarray, apid: int) -> dict[str, np.ndarray]:
    lay = L.FIXED_LAYOUTS[apid]
    if offsets.size == 0:
        return _empty_fixed(lay)
    data = arr[segment_index(offsets, np.full(offsets.size, lay.length))].tobytes()
    logger = getattr(ccsdspy, "log", logging.getLogger("ccsdspy"))
    level = logger.level
    logger.setLevel(logging.ERROR)  # sequence gaps are ours to report, not ccsdspy's warnings
    try:
        res = ccsds_definition(apid).load(io.BytesIO(data), include_primary_header=True)
    finally:
        logger.setLevel(level)
    out = {
        "obt": res["obt_coarse"].astype(np.float64) + res["obt_fine"].astype(np.float64) / L.OBT_FINE_SCALE,
        "seq": res["CCSDS_SEQUENCE_COUNT"].astype(np.uint16),
    }
    for f in lay.fields:
        out[f.name] = np.asarray(res[f.name], dtype=np.float64).reshape(offsets.size, *f.shape)
    return out


# --- headers ---------------------------------------------------------------------------------------------


def _apid_at(arr: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return ((arr[pos].astype(np.int64) & 0x7) << 8) | arr[pos + 1]


def _u16_at(arr: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return (arr[pos].astype(np.int64) << 8) | arr[pos + 1]


def _obt_at(arr: np.ndarray, pos: np.ndarray) -> np.ndarray:
    p = pos + L.PRIMARY_HEADER_LEN
    coarse = (_u16_at(arr, p) << 16) | _u16_at(arr, p + 2)
    fine = (arr[p + 4].astype(np.int64) << 16) | (arr[p + 5].astype(np.int64) << 8) | arr[p + 6]
    return coarse.astype(np.float64) + fine.astype(np.float64) / L.OBT_FINE_SCALE


def _kind(apid: int) -> str:
    return "star" if L.is_star_apid(apid) else L.FIXED_LAYOUTS[apid].key


# --- one packet, strictly --------------------------------------------------------------------------------


def decode_packet(data: bytes, offset: int = 0) -> dict:
    """Decode the packet starting at data[offset]; raise TelemetryError("offset N: ...") if it is not valid.

    Returns a dict: offset, length, apid, kind, seq, obt, then the body fields of that kind (star packets:
    fov, row, mag_class, ac_pixel, sm_flux, gate, flags, n_samples, al_offset (9,), codec, samples (9, 18)).
    """
    arr = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8)
    remain = arr.size - offset
    if offset < 0 or remain < L.PRIMARY_HEADER_LEN:
        raise TelemetryError(
            offset, f"short header: {max(remain, 0)} bytes remain, {L.PRIMARY_HEADER_LEN} needed"
        )
    b0, b2 = int(arr[offset]), int(arr[offset + 2])
    if b0 >> 5 != 0:
        raise TelemetryError(offset, f"bad primary header: version {b0 >> 5}, expected 0")
    if b0 >> 4 & 1:
        raise TelemetryError(offset, "bad primary header: type 1 (telecommand), expected 0 (telemetry)")
    if not b0 >> 3 & 1:
        raise TelemetryError(offset, "bad primary header: secondary header flag 0, expected 1")
    apid = int(_apid_at(arr, np.array([offset]))[0])
    if not L.APID_KNOWN[apid]:
        raise TelemetryError(offset, f"unknown APID 0x{apid:03X}")
    if b2 >> 6 != L.SEQ_FLAGS_UNSEGMENTED:
        raise TelemetryError(offset, f"bad primary header: sequence flags 0b{b2 >> 6:02b}, expected 0b11")
    total = int(_u16_at(arr, np.array([offset + 4]))[0]) + L.PRIMARY_HEADER_LEN + 1
    if total > remain:
        raise TelemetryError(offset, f"truncated: header declares {total} bytes, {remain} remain")
    if not L.LENGTH_MIN[apid] <= total <= L.LENGTH_MAX[apid]:
        raise TelemetryError(
            offset,
            f"bad length: header declares {total} bytes, APID 0x{apid:03X} allows "
            f"{L.LENGTH_MIN[apid]}..{L.LENGTH_MAX[apid]}",
        )
    pos = np.array([offset])
    computed = crc16(arr[offset : offset + total - L.CRC_LEN].tobytes())
    stored = int(_u16_at(arr, pos + total - L.CRC_LEN)[0])
    if computed != stored:
        raise TelemetryError(offset, f"crc_mismatch: computed 0x{computed:04X}, stored 0x{stored:04X}")
    version = int(arr[offset + L.HEADER_LEN - 1])
    if version != L.LAYOUT_VERSION:
        raise TelemetryError(offset, f"bad_payload: layout version {version}, expected {L.LAYOUT_VERSION}")
    out = {
        "offset": offset,
        "length": total,
        "apid": apid,
        "kind": _kind(apid),
        "seq": int(_u16_at(arr, pos + 2)[0]) & (L.SEQ_MODULO - 1),
        "obt": float(_obt_at(arr, pos)[0]),
    }
    if out["kind"] == "star":
        fields, samples, reasons = _decode_star(arr, pos, np.array([total]))
        if reasons:
            raise TelemetryError(offset, reasons[0])
        for k, v in fields.items():
            out[k] = v[0].copy() if v.ndim > 1 else v[0].item()
        out["samples"] = samples[0]
    else:
        lay = L.FIXED_LAYOUTS[apid]
        body = arr[offset + L.HEADER_LEN : offset + L.HEADER_LEN + lay.body_dtype.itemsize]
        rec = body.copy().view(lay.body_dtype)[0]
        for f in lay.fields:
            v = np.asarray(rec[f.name], dtype=np.float64)
            out[f.name] = v.copy() if f.shape else float(v)
    return out


# --- a whole pass ----------------------------------------------------------------------------------------


def _as_array(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data, dtype=np.uint8).ravel()
    return np.frombuffer(data, dtype=np.uint8)


def _select_non_overlapping(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Greedy in file order: keep a segment unless it starts inside an earlier kept one -> bool mask."""
    keep = np.ones(start.size, dtype=bool)
    if start.size < 2:
        return keep
    prev_end = np.maximum.accumulate(end)
    clash = np.flatnonzero(start[1:] < prev_end[:-1]) + 1
    if clash.size == 0:
        return keep
    # Only clusters of overlapping segments (rare: a CRC collision) need the sequential rule.
    cluster_start = np.flatnonzero(np.r_[True, start[1:] >= prev_end[:-1]])
    for c in np.unique(np.searchsorted(cluster_start, clash, side="right") - 1):
        a = cluster_start[c]
        b = cluster_start[c + 1] if c + 1 < cluster_start.size else start.size
        reach = -1
        for i in range(a, b):
            keep[i] = start[i] >= reach
            if keep[i]:
                reach = end[i]
    return keep


def _plausible_headers(h: np.ndarray):
    """Rows of 6 primary-header bytes -> (plausible ignoring length, apid, seq, declared total length)."""
    h = h.astype(np.int64)
    apid = ((h[:, 0] & 0x7) << 8) | h[:, 1]
    ok = ((h[:, 0] & L.FIRST_BYTE_MASK) == L.FIRST_BYTE_VALUE) & L.APID_KNOWN[apid]
    ok &= (h[:, 2] >> 6) == L.SEQ_FLAGS_UNSEGMENTED
    seq = ((h[:, 2] & 0x3F) << 8) | h[:, 3]
    total = ((h[:, 4] << 8) | h[:, 5]) + L.PRIMARY_HEADER_LEN + 1
    return ok, apid, seq, total


_ANY_MIN = int(L.LENGTH_MIN[L.APID_KNOWN].min())
_ANY_MAX = int(L.LENGTH_MAX[L.APID_KNOWN].max())


def _damaged_packet(arr: np.ndarray, p: int, e: int, several_bits: bool) -> Problem | None:
    """Is [p, e) one packet whose primary header is damaged? -> a Problem naming it, or None.

    (1) One flipped bit among the 48 primary-header bits, identified by the CRC: the repaired header must
    be plausible, declare exactly e - p bytes, and make the CRC match. (2) With several_bits: a plausible
    header of an APID that allows e - p bytes, whose length field disagrees.
    """
    size = e - p
    if not _ANY_MIN <= size <= _ANY_MAX:
        return None
    seg = arr[p:e]
    computed = crc16(seg[:-2].tobytes())
    stored = int(seg[-2]) << 8 | int(seg[-1])
    head = f"crc_mismatch: computed 0x{computed:04X}, stored 0x{stored:04X}; "
    nbits = 8 * L.PRIMARY_HEADER_LEN
    trials = np.tile(seg[: L.PRIMARY_HEADER_LEN], (nbits, 1))
    bit = np.arange(nbits)
    trials[bit, bit // 8] ^= (0x80 >> (bit % 8)).astype(np.uint8)
    ok, apid, seq, total = _plausible_headers(trials)
    ok &= (total == size) & (L.LENGTH_MIN[apid] <= size) & (size <= L.LENGTH_MAX[apid])
    for t in np.flatnonzero(ok):
        repaired = np.concatenate([trials[t], seg[L.PRIMARY_HEADER_LEN :]])
        if crc16(repaired[:-2].tobytes()) == stored:
            reason = head + f"primary header bit {t} damaged (repaired: APID 0x{apid[t]:03X}, {size} bytes)"
            return Problem(p, size, reason, int(apid[t]), int(seq[t]))
    ok0, apid0, seq0, total0 = (v[0] for v in _plausible_headers(seg[None, : L.PRIMARY_HEADER_LEN]))
    if several_bits and ok0 and L.LENGTH_MIN[apid0] <= size <= L.LENGTH_MAX[apid0]:
        reason = head + f"header declares {total0} bytes, {size} found"
        return Problem(p, size, reason, int(apid0), int(seq0))
    return None


def _gap_problems(arr, a, b, hdr_pos, hdr_apid, hdr_seq, hdr_total, cand_ok, crc_info) -> list[Problem]:
    """Split the unaccepted byte range [a, b) into problems (see docs/telemetry.md: problem reasons)."""
    n = arr.size
    out: list[Problem] = []
    if b == n and b - a < L.PRIMARY_HEADER_LEN and (arr[a] & L.FIRST_BYTE_MASK) == L.FIRST_BYTE_VALUE:
        return [Problem(a, b - a, f"truncated: partial primary header, {b - a} bytes remain")]
    lo, hi = np.searchsorted(hdr_pos, [a, b])
    inside = hdr_pos[lo:hi]
    cands = inside[cand_ok[lo:hi] & (inside + hdr_total[lo:hi] <= b)]
    p = a
    while p < b:
        j = lo + int(np.searchsorted(inside, p))
        at_header = j < hi and hdr_pos[j] == p
        # a damaged packet would end where the next candidate packet (or the gap) starts
        k = int(np.searchsorted(cands, p, side="right"))
        e = int(cands[k]) if k < cands.size else b
        repaired = _damaged_packet(arr, p, e, several_bits=False)
        if repaired is not None:
            out.append(repaired)
            p = e
            continue
        if at_header:
            apid, seq, total = int(hdr_apid[j]), int(hdr_seq[j]), int(hdr_total[j])
            if cand_ok[j] and p + total <= b and p in crc_info:
                computed, stored = crc_info[p]
                reason = f"crc_mismatch: computed 0x{computed:04X}, stored 0x{stored:04X}"
                out.append(Problem(p, total, reason, apid, seq))
                p += total
                continue
            if b == n and p + total > n and L.LENGTH_MIN[apid] <= total <= L.LENGTH_MAX[apid]:
                reason = f"truncated: header declares {total} bytes, {n - p} remain"
                out.append(Problem(p, n - p, reason, apid, seq))
                p = n
                continue
        damaged = _damaged_packet(arr, p, e, several_bits=True)
        if damaged is not None:
            out.append(damaged)
            p = e
            continue
        nxt = lo + int(np.searchsorted(inside, p, side="right"))
        q = int(hdr_pos[nxt]) if nxt < hi else b
        if at_header:
            reason = f"unframed: {q - p} bytes; header of APID 0x{apid:03X} here declares {total} bytes"
            out.append(Problem(p, q - p, reason, apid, seq))
        else:
            out.append(Problem(p, q - p, f"unframed: {q - p} bytes"))
        p = q
    return out


def decode_pass(data: bytes | np.ndarray, strict: bool = False, samples: bool = True) -> DecodedPass:
    """Decode a pass (packets back to back, possibly damaged) -> DecodedPass; see the module docstring.

    samples=False: every packet is judged exactly as with samples=True (the same packets and problems),
    but the star windows are not unpacked and star has no "samples" (intake needs only the judgement).
    """
    arr = _as_array(data)
    n = arr.size
    # 1. plausible primary headers at every offset (length not yet judged)
    if n >= L.PRIMARY_HEADER_LEN:
        last = n - L.PRIMARY_HEADER_LEN + 1
        pos = np.flatnonzero((arr[:last] & L.FIRST_BYTE_MASK) == L.FIRST_BYTE_VALUE)
        apid = _apid_at(arr, pos)
        keep = L.APID_KNOWN[apid] & ((arr[pos + 2] >> 6) == L.SEQ_FLAGS_UNSEGMENTED)
        pos, apid = pos[keep], apid[keep]
    else:
        pos = apid = np.zeros(0, dtype=np.int64)
    seq = _u16_at(arr, pos + 2) & (L.SEQ_MODULO - 1)
    total = _u16_at(arr, pos + 4) + L.PRIMARY_HEADER_LEN + 1
    # 2. candidates: allowed length for the APID, inside the buffer; their CRCs in one vectorised call
    cand = (total >= L.LENGTH_MIN[apid]) & (total <= L.LENGTH_MAX[apid]) & (pos + total <= n)
    ci = np.flatnonzero(cand)
    computed = crc16_segments(arr, pos[ci], total[ci] - L.CRC_LEN)
    stored = _u16_at(arr, pos[ci] + total[ci] - L.CRC_LEN)
    good = computed == stored
    crc_info = {
        int(p): (int(c), int(s))
        for p, c, s in zip(pos[ci[~good]], computed[~good], stored[~good], strict=True)
    }
    vi = ci[good]
    # 3. accept CRC-valid candidates in file order, dropping any that starts inside an accepted one
    keep = _select_non_overlapping(pos[vi], pos[vi] + total[vi])
    acc = vi[keep]
    a_pos, a_len, a_apid = pos[acc], total[acc], apid[acc]
    # 4. bodies: layout version, star payloads (a bad one turns the packet into a problem)
    problems: list[Problem] = []
    bad = np.zeros(acc.size, dtype=bool)
    version = arr[a_pos + L.HEADER_LEN - 1] if acc.size else np.zeros(0, np.uint8)
    for i in np.flatnonzero(version != L.LAYOUT_VERSION):
        bad[i] = True
        reason = f"bad_payload: layout version {version[i]}, expected {L.LAYOUT_VERSION}"
        problems.append(Problem(int(a_pos[i]), int(a_len[i]), reason, int(a_apid[i]), int(seq[acc[i]])))
    is_star = L.is_star_apid(a_apid) & ~bad
    si = np.flatnonzero(is_star)
    star_fields, star_samples, star_reasons = _decode_star(arr, a_pos[si], a_len[si], samples)
    for k, reason in sorted(star_reasons.items()):
        i = si[k]
        bad[i] = True
        problems.append(Problem(int(a_pos[i]), int(a_len[i]), reason, int(a_apid[i]), int(seq[acc[i]])))
    # 5. every byte outside the accepted packets is accounted as problems
    good_pkt = ~bad
    ends = a_pos + a_len
    gap_a = np.r_[0, ends]
    gap_b = np.r_[a_pos, n]
    for a, b in zip(gap_a[gap_a < gap_b], gap_b[gap_a < gap_b], strict=True):
        problems += _gap_problems(arr, int(a), int(b), pos, apid, seq, total, cand, crc_info)
    problems.sort(key=lambda p: p.offset)
    if strict and problems:
        raise TelemetryError(problems[0].offset, problems[0].reason)
    # 6. results
    packets = np.zeros(int(good_pkt.sum()), dtype=PACKET_DTYPE)
    packets["offset"] = a_pos[good_pkt]
    packets["length"] = a_len[good_pkt]
    packets["apid"] = a_apid[good_pkt]
    packets["seq"] = seq[acc][good_pkt]
    packets["obt"] = _obt_at(arr, a_pos[good_pkt])
    new_index = np.cumsum(good_pkt) - 1
    star_ok = np.ones(si.size, dtype=bool)
    star_ok[list(star_reasons)] = False
    sp = new_index[si[star_ok]]
    star = {"packet": sp, "obt": packets["obt"][sp], "apid": packets["apid"][sp], "seq": packets["seq"][sp]}
    every = bool(star_ok.all())
    star.update({k: v if every else v[star_ok] for k, v in star_fields.items()})
    if star_samples is not None:
        star["samples"] = star_samples if every else star_samples[star_ok]
    fixed = {}
    for fapid, lay in L.FIXED_LAYOUTS.items():
        sel = np.flatnonzero(good_pkt & (a_apid == fapid))
        d = _decode_fixed(arr, a_pos[sel], fapid)
        d["packet"] = new_index[sel]
        fixed[lay.key] = d
    return DecodedPass(
        packets=packets,
        problems=problems,
        star=star,
        n_bytes=n,
        **fixed,
    )
