"""PacketBatch: many encoded packets in one contiguous buffer, selected and reordered with numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def segment_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Byte positions of the concatenation of segments [start, start+length), vectorised."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    out_starts = np.cumsum(lengths) - lengths
    idx = np.arange(total, dtype=np.int64)
    return idx + np.repeat(starts - out_starts, lengths)


@dataclass
class PacketBatch:
    """Encoded packets: bytes of packet i are buf[start[i] : start[i] + length[i]].

    apid, seq (14-bit sequence count) and obt (on-board time, s) are copies of header fields, kept so the
    downlink can prioritise and the truth can name packets without decoding them again.
    """

    buf: np.ndarray  # uint8
    start: np.ndarray  # int64
    length: np.ndarray  # int64
    apid: np.ndarray  # uint16
    seq: np.ndarray  # uint16
    obt: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.start)

    @property
    def nbytes(self) -> int:
        return int(self.length.sum())

    def packet(self, i: int) -> bytes:
        s = int(self.start[i])
        return self.buf[s : s + int(self.length[i])].tobytes()

    def take(self, index: np.ndarray) -> PacketBatch:
        """The packets at index, in that order, compacted into a new buffer."""
        index = np.asarray(index, dtype=np.int64)
        length = self.length[index]
        buf = self.buf[segment_index(self.start[index], length)]
        start = np.cumsum(length) - length
        return PacketBatch(buf, start, length, self.apid[index], self.seq[index], self.obt[index])

    def tobytes(self) -> bytes:
        """The packets back to back, in batch order (a delivery's byte stream)."""
        return self.buf[segment_index(self.start, self.length)].tobytes()

    @staticmethod
    def empty() -> PacketBatch:
        z = np.zeros(0, dtype=np.int64)
        return PacketBatch(np.zeros(0, np.uint8), z, z, z.astype(np.uint16), z.astype(np.uint16), z * 1.0)

    @staticmethod
    def concat(batches: list[PacketBatch]) -> PacketBatch:
        batches = [b for b in batches if len(b)]
        if not batches:
            return PacketBatch.empty()
        offsets = np.cumsum([0] + [len(b.buf) for b in batches[:-1]])
        return PacketBatch(
            np.concatenate([b.buf for b in batches]),
            np.concatenate([b.start + o for b, o in zip(batches, offsets, strict=True)]),
            np.concatenate([b.length for b in batches]),
            np.concatenate([b.apid for b in batches]),
            np.concatenate([b.seq for b in batches]),
            np.concatenate([b.obt for b in batches]),
        )
