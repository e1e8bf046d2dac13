"""Packet encoders: arrays of n packets' fields in, one PacketBatch out (numpy over packets, no loop each).

Star payloads are compressed by window_codec.compress_windows (codec layout.DEFAULT_CODEC unless told
otherwise); this module frames them. docs/telemetry.md gives the byte layouts.
"""

from __future__ import annotations

import numpy as np

from pipeline.telemetry import layout as L
from pipeline.telemetry.batch import PacketBatch, segment_index
from pipeline.telemetry.crc import crc16_segments
from pipeline.telemetry.window_codec import compress_windows

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


def _assemble(apid, seq, obt, parts: list[tuple[np.ndarray | None, np.ndarray | int]]) -> PacketBatch:
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
