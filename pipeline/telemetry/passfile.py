"""Per-pass delivery files: <stem>.tm (the packets in downlink order) and the sidecar <stem>.json.

stem is the pass id for the first delivery and "<pass_id>.d<N>" for a repeated delivery N >= 2. Both files
are written through a temporary name and renamed into place, the sidecar last: a sidecar marks a complete
delivery. The sidecar is deterministic (sorted keys, fixed indentation, ASCII, trailing newline).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pipeline.mission_time import iso

FORMAT = "soc-telemetry-pass/1"
DATA_SUFFIX = ".tm"
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class PassMeta:
    format: str
    station: str
    pass_id: str
    delivery: int
    aos_utc: str
    los_utc: str
    reception_utc: str
    packet_count: int
    byte_count: int
    sha256: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2, ensure_ascii=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PassMeta:
        d = json.loads(text)
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise ValueError(f"pass sidecar keys {sorted(d)} differ from {sorted(names)}")
        if d["format"] != FORMAT:
            raise ValueError(f"unknown pass format {d['format']!r}, expected {FORMAT!r}")
        return cls(**d)

    @property
    def stem(self) -> str:
        return pass_stem(self.pass_id, self.delivery)


@dataclass(frozen=True)
class PassChecks(Mapping):
    """How the data file compares with its sidecar (reported, never raised).

    Attributes and, read-only, a mapping of the same names: checks.size_ok == checks["size_ok"].
    """

    expected_bytes: int
    actual_bytes: int
    expected_sha256: str
    actual_sha256: str

    @property
    def size_ok(self) -> bool:
        return self.expected_bytes == self.actual_bytes

    @property
    def sha256_ok(self) -> bool:
        return self.expected_sha256 == self.actual_sha256

    @property
    def ok(self) -> bool:
        return self.size_ok and self.sha256_ok

    @property
    def truncated(self) -> bool:
        return self.actual_bytes < self.expected_bytes

    KEYS = (
        "ok",
        "size_ok",
        "sha256_ok",
        "truncated",
        "expected_bytes",
        "actual_bytes",
        "expected_sha256",
        "actual_sha256",
    )

    def __getitem__(self, key: str):
        if key not in self.KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.KEYS)

    def __len__(self) -> int:
        return len(self.KEYS)


def pass_stem(pass_id: str, delivery: int = 1) -> str:
    if not pass_id or "/" in pass_id or "\\" in pass_id or pass_id.startswith("."):
        raise ValueError(f"pass_id {pass_id!r} is not a plain file name")
    if int(delivery) < 1:
        raise ValueError("delivery counts from 1")
    return pass_id if delivery == 1 else f"{pass_id}.d{int(delivery)}"


def _utc(value) -> str:
    return value if isinstance(value, str) else iso(value)


def pass_meta_for(
    station: str,
    pass_id: str,
    aos_utc,
    los_utc,
    reception_utc,
    data: bytes,
    packet_count: int,
    delivery: int = 1,
) -> PassMeta:
    """The sidecar of a delivery of data (times: ISO strings, or mission seconds converted to ISO)."""
    pass_stem(pass_id, delivery)
    return PassMeta(
        format=FORMAT,
        station=station,
        pass_id=pass_id,
        delivery=int(delivery),
        aos_utc=_utc(aos_utc),
        los_utc=_utc(los_utc),
        reception_utc=_utc(reception_utc),
        packet_count=int(packet_count),
        byte_count=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_pass(directory, meta: PassMeta, data: bytes) -> Path:
    """Write <stem>.tm then <stem>.json into directory -> the .tm path.

    The bytes are written as given; meta is expected to describe the complete pass as sent (pass_meta_for),
    so a simulator may write damaged data under an honest sidecar and the reader will notice.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (meta.stem + DATA_SUFFIX)
    _write_atomic(path, bytes(data))
    _write_atomic(directory / (meta.stem + SIDECAR_SUFFIX), meta.to_json().encode("ascii"))
    return path


def sidecar_path(path) -> Path:
    return Path(path).with_suffix(SIDECAR_SUFFIX)


def read_pass(path) -> tuple[PassMeta, bytes, PassChecks]:
    """Read a delivery (path of the .tm or of the .json) -> (meta, data, checks against the sidecar)."""
    path = Path(path)
    data_path = path.with_suffix(DATA_SUFFIX)
    meta = PassMeta.from_json(sidecar_path(data_path).read_text(encoding="ascii"))
    data = data_path.read_bytes()
    checks = PassChecks(meta.byte_count, len(data), meta.sha256, hashlib.sha256(data).hexdigest())
    return meta, data, checks


def list_passes(directory, order: str = "name") -> list[Path]:
    """The complete deliveries in directory (a visible .tm with its sidecar), data paths sorted by name, or
    with order="arrival" in the order they were completed: by the sidecar's modification time (the sidecar
    is written last), then by name. The landing tee keeps that time in every copy, so each landing directory
    lists its deliveries in the order they arrived in the incoming directory, whenever its watcher looks."""
    directory = Path(directory)
    found = [
        p
        for p in directory.glob("*" + DATA_SUFFIX)
        if not p.name.startswith(".") and sidecar_path(p).exists()
    ]
    if order == "name":
        return sorted(found)
    if order != "arrival":
        raise ValueError(f"order: 'name' or 'arrival', not {order!r}")
    arrived = {}
    for p in found:
        try:
            arrived[p] = sidecar_path(p).stat().st_mtime_ns
        except FileNotFoundError:  # removed meanwhile
            continue
    return sorted(arrived, key=lambda p: (arrived[p], p.name))
