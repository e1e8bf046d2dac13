"""The landing tee: every delivery that arrives in the incoming directory, copied once into each landing.

Ground stations deliver a pass as <stem>.tm and then its sidecar <stem>.json into one incoming directory;
a sidecar beside its data file marks a complete delivery (pipeline.telemetry.passfile). Operations and
validation each watch a landing directory of their own (`soc ingest --watch`). The tee copies every complete
delivery into every landing directory (its targets):

- atomically: each file is written under a hidden temporary name (.<name>.tee-tmp, which no watcher looks
  at), flushed to disk and renamed into place, the data file first and the sidecar last, so a watcher never
  sees half a delivery;
- in the order of arrival: deliveries are copied in the order they were completed in incoming, and each copy
  keeps the modification time of its original, so every landing lists its deliveries in one order, that of
  incoming, however the rounds of the tee and the looks of the watchers interleave;
- once per target: after a copy, a marker <state>/<target key>/<stem> records the sidecar's digest. A
  delivery is never copied to a target again, even after the target's pipeline has archived or deleted its
  copy. A tee killed between the sidecar's rename and the marker finds the identical copy on its next round
  and only writes the marker;
- independently per target: a target that fails (a full disk, an unmounted directory) is retried on the next
  round and does not hold the others back. A new target gets every delivery still in the incoming directory;
- refusing what is not the same delivery: a delivery whose sidecar changed after it was copied, or a target
  that already holds other content under the delivery's name, is reported and left alone (intake would
  refuse it too).

Rounds hold an exclusive lock on the state directory, so two tees sharing it (a standby taking over) never
copy the same delivery at once. The state directory lives beside the incoming directory by default, so it
is shared by whichever host runs the tee.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from pipeline.telemetry.passfile import DATA_SUFFIX, SIDECAR_SUFFIX, list_passes

TMP_SUFFIX = ".tee-tmp"
STATE_NAME = ".soc-tee"


def complete_deliveries(incoming: Path) -> list[Path]:
    """The complete deliveries in incoming, data paths in the order they arrived (list_passes)."""
    return list_passes(incoming, "arrival")


def target_key(target: Path) -> str:
    """The name of a target's marker directory: its absolute, normalised path, quoted into one file name."""
    return quote(os.path.abspath(target), safe="")


@dataclass
class RoundResult:
    copied: list[tuple[str, Path]] = field(default_factory=list)  # (stem, target)
    recorded: list[tuple[str, Path]] = field(default_factory=list)  # found complete in the target, marked
    refused: list[str] = field(default_factory=list)  # messages
    errors: list[str] = field(default_factory=list)  # messages (retried next round)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_atomic(src: Path, dst: Path, keep_time: bool = False) -> None:
    """Copy under a hidden name, flush, rename into place; keep_time: with src's modification time."""
    tmp = dst.with_name(f".{dst.name}{TMP_SUFFIX}")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            if keep_time:
                st = os.fstat(fin.fileno())
                os.utime(fout.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _same_file(a: Path, b: Path) -> bool:
    if not b.is_file() or a.stat().st_size != b.stat().st_size:
        return False
    digests = []
    for p in (a, b):
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(functools.partial(fh.read, 1 << 20), b""):
                h.update(block)
        digests.append(h.digest())
    return digests[0] == digests[1]


class Tee:
    """Copies the complete deliveries of incoming into each target directory, once each."""

    def __init__(self, incoming: Path, targets: Iterable[Path], state: Path | None = None):
        self.incoming = Path(incoming)
        self.targets = [Path(t) for t in targets]
        if not self.targets:
            raise ValueError("the tee needs at least one target directory")
        keys = [target_key(t) for t in self.targets]
        if len(set(keys)) != len(keys):
            raise ValueError(f"the tee's targets must differ: {[str(t) for t in self.targets]}")
        if any(target_key(t) == target_key(self.incoming) for t in self.targets):
            raise ValueError("a target cannot be the incoming directory itself")
        self.state = Path(state) if state else self.incoming / STATE_NAME

    def run_once(self) -> RoundResult:
        """One look at incoming: copy every complete delivery that a target has not had yet."""
        result = RoundResult()
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for data in complete_deliveries(self.incoming):
                try:
                    sidecar_bytes = data.with_suffix(SIDECAR_SUFFIX).read_bytes()
                except OSError as exc:  # removed meanwhile
                    result.errors.append(f"{data.name}: {exc}")
                    continue
                digest = hashlib.sha256(sidecar_bytes).hexdigest()
                for target in self.targets:
                    try:
                        self._one(data, digest, target, result)
                    except OSError as exc:
                        result.errors.append(f"{data.stem} -> {target}: {exc}")
        return result

    def _one(self, data: Path, digest: str, target: Path, result: RoundResult) -> None:
        stem = data.stem
        marks = self.state / target_key(target)
        marker = marks / stem
        if marker.exists():
            if marker.read_text().strip() != digest:
                result.refused.append(f"{stem}: its sidecar changed after it was copied to {target}")
            return
        sidecar = data.with_suffix(SIDECAR_SUFFIX)
        dst_data, dst_sidecar = target / data.name, target / sidecar.name
        if not target.is_dir():
            raise FileNotFoundError(f"target directory {target} does not exist")
        if dst_sidecar.exists():  # a complete delivery of that name is there already
            if not (_same_file(sidecar, dst_sidecar) and _same_file(data, dst_data)):
                result.refused.append(f"{stem}: {target} holds other content under that name")
                return
            result.recorded.append((stem, target))
        else:
            # the sidecar last: now the delivery is complete there, with the time it arrived in incoming
            # (its watcher takes deliveries in that order: pipeline.telemetry.passfile.list_passes)
            _copy_atomic(data, dst_data, keep_time=True)
            _copy_atomic(sidecar, dst_sidecar, keep_time=True)
            _fsync_dir(target)
            result.copied.append((stem, target))
        marks.mkdir(parents=True, exist_ok=True)
        _write_atomic(marker, digest + "\n")

    def watch(self, interval: float = 5.0) -> None:
        """Look at incoming every interval seconds, forever; print each copy, and each new problem once."""
        told: set[str] = set()
        while True:
            r = self.run_once()
            for stem, target in r.copied:
                print(f"{stem}: copied to {target}", flush=True)
            for stem, target in r.recorded:
                print(f"{stem}: already complete in {target}, recorded", flush=True)
            for kind, messages in (("refused", r.refused), ("error", r.errors)):
                for msg in messages:
                    if msg not in told:
                        told.add(msg)
                        print(f"soc tee: {kind}: {msg}", file=sys.stderr, flush=True)
            time.sleep(interval)


def deliver(files: Iterable[Path], incoming: Path) -> list[str]:
    """Deliver pass files (each with its sidecar) into an incoming directory as a ground station does: the
    data file, then the sidecar, each written atomically. A delivery already there with the same bytes is
    left as it is; one with other bytes under the same name is an error. Returns the delivered names."""
    incoming = Path(incoming)
    incoming.mkdir(parents=True, exist_ok=True)
    names = []
    for data in files:
        for src in (data.with_suffix(DATA_SUFFIX), data.with_suffix(SIDECAR_SUFFIX)):
            dst = incoming / src.name
            if dst.exists():
                if not _same_file(src, dst):
                    raise FileExistsError(f"{dst} exists with other content: not delivering {src}")
                continue
            _copy_atomic(src, dst)
        names.append(data.with_suffix(DATA_SUFFIX).name)
    _fsync_dir(incoming)
    return names
