"""Downlink: ground-station contacts, the on-board store and its priorities, and delivery faults.

Contacts: the three ESA deep-space stations see L2 (near the anti-Sun direction) around local midnight.
Each day two of the three stations are booked, each for a contact of 4-9 h inside its 12-h visibility
window; overlapping bookings are trimmed so that one station receives at a time. All choices are
hashes of (seed, day, station), so a day's schedule does not depend on which days are simulated.

During a contact the on-board store sends, up to the contact's capacity (rate x duration), the packets
generated before the contact ends, in priority order: housekeeping, auxiliary, then science by magnitude
class, brightest first; within a priority in generation order. What does not fit waits for the next
contact, so arrival is not time-ordered and crosses day boundaries.

Faults (opt-in) are applied to a contact's delivery and recorded: packets lost in the downlink (sequence
gaps), duplicated packets, single-bit flips, a truncated file, a whole pass delivered twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.mission_time import DAY_S, to_utc
from pipeline.simulate.hashing import uniform
from pipeline.telemetry.batch import PacketBatch

FAULT_KINDS = ("gap", "duplicate", "bitflip", "truncate", "repeat_pass")
FAULT_RATES = {"gap": 1e-3, "duplicate": 2e-3, "bitflip": 1e-3}
PRIORITY_HK, PRIORITY_AUX, PRIORITY_STAR0 = 0, 1, 2


@dataclass(frozen=True)
class Station:
    code: str
    name: str
    longitude_deg: float


STATIONS = (
    Station("CEB", "Cebreros", -4.37),
    Station("MLG", "Malargue", -69.40),
    Station("NNO", "New Norcia", 116.19),
)


@dataclass(frozen=True)
class Contact:
    station: str
    aos: float  # acquisition of signal, mission seconds
    los: float  # loss of signal

    @property
    def pass_id(self) -> str:
        stamp = str(np.datetime_as_string(to_utc(self.aos), unit="m")).replace("-", "").replace(":", "")
        return f"{self.station}-{stamp}"


def contact_schedule(seed: int, t_lo: float, t_hi: float) -> list[Contact]:
    """Contacts whose AOS lies in [t_lo, t_hi), in time order."""
    booked: list[Contact] = []
    first, last = int(np.floor(t_lo / DAY_S)) - 1, int(np.ceil(t_hi / DAY_S)) + 1
    for day in range(first, last + 1):
        todays = []
        for s_i, st in enumerate(STATIONS):
            midnight = day * DAY_S + ((-st.longitude_deg / 360.0) % 1.0) * DAY_S
            duration = (4.0 + 5.0 * float(uniform(seed, day, s_i, 2))) * 3600.0
            start = midnight - 6 * 3600.0 + float(uniform(seed, day, s_i, 3)) * (12 * 3600.0 - duration)
            todays.append((float(uniform(seed, day, s_i, 1)), Contact(st.code, start, start + duration)))
        todays.sort(key=lambda uc: uc[0])
        booked.extend(c for _, c in todays[1:])  # two of the three stations each day
    booked.sort(key=lambda c: c.aos)
    trimmed: list[Contact] = []
    for c in booked:
        aos = max(c.aos, trimmed[-1].los) if trimmed else c.aos
        if c.los - aos >= 3600.0:
            trimmed.append(Contact(c.station, aos, c.los))
    return [c for c in trimmed if t_lo <= c.aos < t_hi]


@dataclass
class OnboardStore:
    """Packets waiting on board: a PacketBatch with per-packet priority and generation time."""

    batch: PacketBatch = field(default_factory=PacketBatch.empty)
    priority: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    t_gen: np.ndarray = field(default_factory=lambda: np.zeros(0))
    key: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # caller's id for the truth

    def add(self, batch: PacketBatch, priority: np.ndarray, t_gen: np.ndarray, key: np.ndarray) -> None:
        self.batch = PacketBatch.concat([self.batch, batch])
        self.priority = np.concatenate([self.priority, np.asarray(priority, np.int64)])
        self.t_gen = np.concatenate([self.t_gen, np.asarray(t_gen, float)])
        self.key = np.concatenate([self.key, np.asarray(key, np.int64)])

    def __len__(self) -> int:
        return len(self.priority)

    def downlink(self, capacity_bytes: float, until: float) -> tuple[PacketBatch, np.ndarray, np.ndarray]:
        """Take what fits, in priority order -> (packets in send order, their t_gen, their keys)."""
        eligible = np.flatnonzero(self.t_gen <= until)
        order = eligible[np.lexsort((self.t_gen[eligible], self.priority[eligible]))]
        fits = np.cumsum(self.batch.length[order]) <= capacity_bytes
        sent = order[fits]
        keep = np.setdiff1d(np.arange(len(self)), sent)
        out = (self.batch.take(sent), self.t_gen[sent], self.key[sent])
        self.batch = self.batch.take(keep)
        self.priority, self.t_gen, self.key = self.priority[keep], self.t_gen[keep], self.key[keep]
        return out


@dataclass
class Delivery:
    """One delivered file's content and what happened to the packets on the way."""

    data: bytes
    packet_count: int  # packets in the pass as sent (before loss and duplication)
    sent_index: np.ndarray  # per packet in the file: index into the contact's sent batch
    file_offset: np.ndarray  # per packet in the file: byte offset (before truncation)
    lost: np.ndarray  # indices into the sent batch lost in the downlink
    faults: list[dict]
    truncated_at: int | None = None


def deliver(rng: np.random.Generator, sent: PacketBatch, kinds: tuple[str, ...], truncate: bool) -> Delivery:
    """Apply downlink faults to a contact's packets and return the bytes of the delivered file."""
    n = len(sent)
    faults: list[dict] = []
    keep = np.ones(n, bool)
    if "gap" in kinds and n:
        lost = rng.random(n) < FAULT_RATES["gap"]
        keep &= ~lost
        faults += [
            _fault("gap", sent, i, None, None, "packet lost in the downlink") for i in np.flatnonzero(lost)
        ]
    order = np.flatnonzero(keep)
    if "duplicate" in kinds and len(order):
        dup = order[rng.random(len(order)) < FAULT_RATES["duplicate"]]
        for i in dup:  # a repeated frame: the copy arrives a little later in the same pass
            pos = min(int(np.searchsorted(order, i)) + 1 + int(rng.integers(0, 50)), len(order))
            order = np.insert(order, pos, i)
    file_batch = sent.take(order)
    offsets = np.cumsum(file_batch.length) - file_batch.length
    if "duplicate" in kinds:
        seen: set[int] = set()
        for k, i in enumerate(order):
            if int(i) in seen:
                faults.append(_fault("duplicate", sent, i, int(offsets[k]), None, "packet delivered twice"))
            seen.add(int(i))
    data = bytearray(file_batch.tobytes())
    if "bitflip" in kinds and len(order):
        for j in np.flatnonzero(rng.random(len(order)) < FAULT_RATES["bitflip"]):
            bit = int(rng.integers(0, int(file_batch.length[j]) * 8))
            data[int(offsets[j]) + bit // 8] ^= 0x80 >> (bit % 8)
            faults.append(
                _fault("bitflip", sent, order[j], int(offsets[j]), bit, f"bit {bit} of the packet flipped")
            )
    truncated_at = None
    full = bytes(data)
    if truncate and len(order) > 1:  # the file is cut at a random byte in its last tenth
        truncated_at = int(rng.integers(int(offsets[int(0.9 * (len(order) - 1))]) + 1, len(full)))
        for j in np.flatnonzero(offsets + file_batch.length > truncated_at):
            detail = f"file truncated at byte {truncated_at}"
            faults.append(_fault("truncate", sent, order[j], int(offsets[j]), None, detail))
    return Delivery(full, n, order, offsets, np.flatnonzero(~keep), faults, truncated_at)


def _fault(kind: str, sent: PacketBatch, i, offset, bit, detail: str) -> dict:
    return {
        "kind": kind,
        "apid": int(sent.apid[i]),
        "seq": int(sent.seq[i]),
        "obt": float(sent.obt[i]),
        "file_offset": -1 if offset is None else offset,
        "bit": -1 if bit is None else bit,
        "detail": detail,
    }
