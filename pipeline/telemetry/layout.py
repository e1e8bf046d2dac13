"""Packet layouts as data: APID map, header and body layouts, size limits, codec numbers.

Everything the encoder and the decoder must agree on lives here; docs/telemetry.md describes the same
layouts in prose and tables. All multi-byte fields are big-endian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import instrument
from pipeline.instrument import (
    N_AF,
    N_FOV,
    N_MAG_CLASSES,
    N_ROWS,
    NOMINAL_BIAS_ADU,
    WINDOW_SAMPLES_BRIGHT,
    WINDOW_SAMPLES_FAINT,
)
from pipeline.telemetry.errors import TelemetryError

__all__ = [
    "APID_AUX_ATTITUDE",
    "APID_AUX_TIMECORR",
    "APID_HK_BIAS",
    "APID_HK_POWER",
    "APID_HK_THERMAL",
    "HK_POWER_NAMES",
    "KNOWN_APIDS",
    "TelemetryError",
    "is_star_apid",
    "parse_star_apid",
    "star_apid",
]

# --- headers ---------------------------------------------------------------------------------------------
PRIMARY_HEADER_LEN = 6
SECONDARY_HEADER_LEN = 8
HEADER_LEN = PRIMARY_HEADER_LEN + SECONDARY_HEADER_LEN
CRC_LEN = 2
LAYOUT_VERSION = 1
SEQ_MODULO = 1 << 14  # 14-bit sequence count
SEQ_FLAGS_UNSEGMENTED = 0b11
OBT_FINE_SCALE = 1 << 24  # CUC fine time: 24 bits, units of 2**-24 s
# Byte 0 of every packet: version 000, type 0 (telemetry), secondary header flag 1, then APID bits 10..8.
FIRST_BYTE_MASK = 0xF8
FIRST_BYTE_VALUE = 0x08

PRIMARY_DTYPE = np.dtype([("ident", ">u2"), ("seq_ctrl", ">u2"), ("data_length", ">u2")])
SECONDARY_DTYPE = np.dtype([("coarse", ">u4"), ("fine", "u1", (3,)), ("layout_version", "u1")])

# --- APIDs -----------------------------------------------------------------------------------------------
APID_HK_THERMAL = 0x010
APID_HK_BIAS = 0x011
APID_HK_POWER = 0x012
APID_AUX_ATTITUDE = 0x020
APID_AUX_TIMECORR = 0x021
STAR_APID_BASE = 0x100

HK_POWER_NAMES = ("bus_28v", "vpu_5v", "vpu_3v3", "ccd_vod", "ccd_vrd", "ccd_vdd", "heater_a_w", "heater_b_w")


def _as_result(value: np.ndarray, scalar: bool):
    return value.item() if scalar else value


def star_apid(mag_class, fov, row):
    """APID of a star packet: 0x100 | mag_class << 4 | fov << 3 | row (vectorised; ints in, int out)."""
    scalar = all(np.ndim(v) == 0 for v in (mag_class, fov, row))
    m, f, r = (np.asarray(v, dtype=np.int64) for v in (mag_class, fov, row))
    bad = (m < 0) | (m >= N_MAG_CLASSES) | (f < 0) | (f >= N_FOV) | (r < 0) | (r >= N_ROWS)
    if np.any(bad):
        raise ValueError("star_apid: mag_class, fov or row out of range")
    return _as_result((STAR_APID_BASE | (m << 4) | (f << 3) | r).astype(np.uint16), scalar)


def is_star_apid(apid):
    """True for the 42 star APIDs (vectorised)."""
    scalar = np.ndim(apid) == 0
    a = np.asarray(apid, dtype=np.int64)
    ok = ((a >> 8) == 1) & (((a >> 4) & 0xF) < N_MAG_CLASSES) & ((a & 0x7) < N_ROWS)
    return _as_result(ok, scalar)


def parse_star_apid(apid):
    """APID -> (mag_class, fov, row); ValueError if any APID is not a star APID."""
    scalar = np.ndim(apid) == 0
    a = np.asarray(apid, dtype=np.int64)
    if not np.all(is_star_apid(a)):
        raise ValueError("parse_star_apid: not a star APID")
    return tuple(_as_result(v, scalar) for v in ((a >> 4) & 0xF, (a >> 3) & 0x1, a & 0x7))


STAR_APIDS = tuple(
    int(star_apid(m, f, r)) for m in range(N_MAG_CLASSES) for f in range(N_FOV) for r in range(N_ROWS)
)

# --- fixed-length bodies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str  # numpy big-endian type string
    shape: tuple[int, ...]
    unit: str
    meaning: str


@dataclass(frozen=True)
class FixedLayout:
    """A fixed-length packet kind: its APID, the DecodedPass attribute it decodes into, its body fields."""

    apid: int
    key: str
    fields: tuple[Field, ...]

    @property
    def body_dtype(self) -> np.dtype:
        return np.dtype([(f.name, f.dtype, f.shape) for f in self.fields])

    @property
    def length(self) -> int:
        """Total packet length in bytes (headers, body and CRC)."""
        return HEADER_LEN + self.body_dtype.itemsize + CRC_LEN


FIXED_LAYOUTS: dict[int, FixedLayout] = {
    lay.apid: lay
    for lay in (
        FixedLayout(
            APID_HK_THERMAL,
            "hk_thermal",
            (Field("temps", ">f4", (9,), "K", "focal-plane rows 0..6, then mirror M1, mirror M2"),),
        ),
        FixedLayout(
            APID_HK_BIAS,
            "hk_bias",
            (Field("bias", ">f4", (N_ROWS, 1 + N_AF), "ADU", "row r, column c at r*10+c (c 0 = SM)"),),
        ),
        FixedLayout(
            APID_HK_POWER,
            "hk_power",
            (Field("values", ">f4", (len(HK_POWER_NAMES),), "V / W", "in the order of HK_POWER_NAMES"),),
        ),
        FixedLayout(
            APID_AUX_ATTITUDE,
            "attitude",
            (
                Field("quat", ">f8", (4,), "", "x, y, z, w (scalar last): ICRS -> scanning reference frame"),
                Field("spin_phase", ">f8", (), "rad", "spin phase"),
                Field("precession_phase", ">f8", (), "rad", "precession phase"),
                Field("sun_longitude", ">f8", (), "rad", "ecliptic longitude of the Sun"),
            ),
        ),
        FixedLayout(
            APID_AUX_TIMECORR,
            "timecorr",
            (
                Field("utc", ">f8", (), "s", "UTC (mission seconds) of the instant the packet OBT names"),
                Field("clock_rate", ">f8", (), "", "on-board clock rate estimate (OBT s per UTC s)"),
            ),
        ),
    )
}

# --- star packets ----------------------------------------------------------------------------------------
N_WINDOWS = N_AF
MAX_SAMPLES = WINDOW_SAMPLES_BRIGHT
WINDOW_LENGTHS = (WINDOW_SAMPLES_FAINT, WINDOW_SAMPLES_BRIGHT)  # the allowed n_samples
MAX_GATE = instrument.MAX_GATE

STAR_FIXED_DTYPE = np.dtype(
    [
        ("ac_pixel", ">u2"),
        ("sm_flux", ">u4"),
        ("gate", "u1"),
        ("flags", "u1"),
        ("n_samples", "u1"),
        ("n_windows", "u1"),
        ("al_offset", "i1", (N_WINDOWS,)),
        ("codec", "u1"),
        ("payload_length", ">u2"),
    ]
)
STAR_FIXED_LEN = STAR_FIXED_DTYPE.itemsize  # 22
FLAG_SATURATED = 0x01

# Payload codecs (the codec byte). The encoder writes CODEC_ZSTD unless told otherwise, and falls back to
# CODEC_RAW for a window set that would not shrink; the decoder reads all three.
CODEC_RAW = 0  # 9 x n_samples uint16 big-endian, window-major
CODEC_ZSTD = 1  # zstd frame (magicless, no checksum) of the byte-shuffled zigzag residuals (mod 2**16)
CODEC_RICE = 2  # Rice-coded residuals, see docs/telemetry.md
CODEC_NAMES = {CODEC_RAW: "raw", CODEC_ZSTD: "zstd", CODEC_RICE: "rice"}
DEFAULT_CODEC = CODEC_ZSTD
ZSTD_LEVEL = 19

# Residual predictor shared by the zstd and Rice codecs: sample j of window 0 is predicted by sample j-1
# (the first sample by the nominal bias), sample j of window w >= 1 by floor(mean of windows 0..w-1).
PREDICTOR_ORIGIN = int(NOMINAL_BIAS_ADU)
RICE_K_BITS = 4  # one 4-bit Rice parameter per window
RICE_Q_ESCAPE = 16  # a quotient >= this is written as 16 ones, a zero, and 17 bits in the escape section
RICE_ESCAPE_BITS = 17

MAX_PAYLOAD = 2 * N_WINDOWS * MAX_SAMPLES  # the raw size: no codec is allowed to exceed it
STAR_MIN_LENGTH = HEADER_LEN + STAR_FIXED_LEN + 1 + CRC_LEN
STAR_MAX_LENGTH = HEADER_LEN + STAR_FIXED_LEN + MAX_PAYLOAD + CRC_LEN

KNOWN_APIDS = tuple(sorted(FIXED_LAYOUTS)) + STAR_APIDS

# Lookup tables over all 2048 APIDs for the vectorised framing: allowed total packet length [min, max].
APID_KNOWN = np.zeros(2048, dtype=bool)
LENGTH_MIN = np.zeros(2048, dtype=np.int64)
LENGTH_MAX = np.full(2048, -1, dtype=np.int64)
for _apid, _lay in FIXED_LAYOUTS.items():
    APID_KNOWN[_apid] = True
    LENGTH_MIN[_apid] = LENGTH_MAX[_apid] = _lay.length
for _apid in STAR_APIDS:
    APID_KNOWN[_apid] = True
    LENGTH_MIN[_apid] = STAR_MIN_LENGTH
    LENGTH_MAX[_apid] = STAR_MAX_LENGTH
del _apid, _lay
