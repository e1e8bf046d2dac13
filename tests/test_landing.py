"""The landing tee: every complete delivery into every landing, atomically, sidecar last, never twice."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from pipeline import landing
from pipeline.intake import pending_files
from pipeline.landing import Tee, complete_deliveries, target_key
from pipeline.telemetry.passfile import pass_meta_for, read_pass, write_pass


def _deliver(incoming, pass_id, payload=b"\x00\x01" * 500, delivery=1):
    meta = pass_meta_for("KIR", pass_id, "2016-08-01T00:00:00", "2016-08-01T00:10:00",
                         "2016-08-01T00:20:00", payload, 1, delivery)  # fmt: skip
    return write_pass(incoming, meta, payload)


@pytest.fixture
def dirs(tmp_path):
    incoming, ops, val = tmp_path / "incoming", tmp_path / "ops", tmp_path / "val"
    for d in (incoming, ops, val):
        d.mkdir()
    return incoming, ops, val


def test_every_complete_delivery_reaches_every_landing_once(dirs):
    incoming, ops, val = dirs
    a, b = _deliver(incoming, "P0001"), _deliver(incoming, "P0001", b"\x07" * 9, delivery=2)
    (incoming / "P0002.tm").write_bytes(b"no sidecar yet")  # still arriving: not a delivery
    tee = Tee(incoming, [ops, val])
    r = tee.run_once()
    assert sorted(r.copied) == sorted((p.stem, t) for p in (a, b) for t in (ops, val))
    for target in (ops, val):
        assert pending_files(target) == sorted([target / a.name, target / b.name])
        for p in (a, b):
            assert read_pass(target / p.name)[2].ok
            assert (target / p.name).read_bytes() == p.read_bytes()
        assert not [p.name for p in target.iterdir() if p.name.startswith(".")]  # no temporary left
    assert not (ops / "P0002.tm").exists()
    assert tee.run_once().copied == []  # never twice
    for target in (ops, val):  # not even when the landing has archived its copies
        for p in list(target.iterdir()):
            p.unlink()
    again = tee.run_once()
    assert (again.copied, again.refused, again.errors) == ([], [], [])
    assert list(ops.iterdir()) == []
    c = _deliver(incoming, "P0002")  # now complete
    assert sorted(tee.run_once().copied) == [(c.stem, ops), (c.stem, val)]


def test_the_sidecar_is_renamed_into_place_last(dirs, monkeypatch):
    incoming, ops, _ = dirs
    _deliver(incoming, "P0003")
    order = []
    real = os.replace

    def spy(src, dst):
        order.append(os.path.basename(dst))
        # at the moment any file appears in the landing, the watcher must see no half delivery
        assert all((ops / p.name).exists() for p in pending_files(ops))
        real(src, dst)

    monkeypatch.setattr(landing.os, "replace", spy)
    Tee(incoming, [ops], state=incoming / "state").run_once()
    assert order[:2] == ["P0003.tm", "P0003.json"]  # data, then sidecar (then the tee's own marker)


def test_a_failing_target_does_not_hold_the_other_back_and_is_retried(dirs):
    incoming, ops, val = dirs
    p = _deliver(incoming, "P0004")
    val.rmdir()  # e.g. validation's landing not mounted
    tee = Tee(incoming, [ops, val])
    r = tee.run_once()
    assert r.copied == [(p.stem, ops)] and len(r.errors) == 1 and "does not exist" in r.errors[0]
    val.mkdir()
    r = tee.run_once()
    assert r.copied == [(p.stem, val)] and r.errors == []


def test_a_tee_killed_before_its_marker_does_not_copy_again(dirs):
    incoming, ops, _ = dirs
    p = _deliver(incoming, "P0005")
    shutil.copy(p, ops / p.name)  # the copies made, then the tee died before recording them
    shutil.copy(p.with_suffix(".json"), ops / p.with_suffix(".json").name)
    before = (ops / p.name).stat().st_ino
    r = Tee(incoming, [ops]).run_once()
    assert (r.copied, r.recorded) == ([], [(p.stem, ops)])
    assert (ops / p.name).stat().st_ino == before
    assert Tee(incoming, [ops]).run_once().recorded == []


def test_other_content_under_a_delivered_name_is_refused(dirs):
    incoming, ops, val = dirs
    p = _deliver(incoming, "P0006")
    (val / p.name).write_bytes(b"something else")
    (val / p.with_suffix(".json").name).write_text("{}")
    tee = Tee(incoming, [ops, val])
    r = tee.run_once()
    assert r.copied == [(p.stem, ops)] and len(r.refused) == 1 and str(val) in r.refused[0]
    assert (val / p.name).read_bytes() == b"something else"
    _deliver(incoming, "P0006", b"\x05" * 10)  # a changed delivery under the same name
    r = tee.run_once()
    assert r.copied == [] and any("changed after it was copied" in m for m in r.refused)
    assert (ops / p.name).read_bytes() == b"\x00\x01" * 500


def test_a_new_target_gets_the_backlog_and_targets_must_differ(dirs, tmp_path):
    incoming, ops, val = dirs
    _deliver(incoming, "P0007")
    Tee(incoming, [ops]).run_once()
    r = Tee(incoming, [ops, val]).run_once()  # e.g. the standby became the active host
    assert r.copied == [("P0007", val)]
    assert sorted(p.name for p in (incoming / ".soc-tee").iterdir()) == sorted(
        [".lock", target_key(ops), target_key(val)]
    )
    with pytest.raises(ValueError, match="differ"):
        Tee(incoming, [ops, tmp_path / "x" / ".." / "ops"])
    with pytest.raises(ValueError, match="incoming"):
        Tee(incoming, [incoming])
    assert complete_deliveries(incoming) == [incoming / "P0007.tm"]


def test_every_landing_lists_its_deliveries_in_the_order_they_arrived_in_incoming(dirs):
    """Deliveries arrive out of name order, over several rounds of the tee, and one landing is copied to
    later than the other: both list them in the order of incoming (the order their watchers ingest in)."""
    incoming, ops, val = dirs
    arrived = []
    for n, pass_id in enumerate(["P0030", "P0010", "P0020", "P0015"]):
        arrived.append(_deliver(incoming, pass_id).name)
        os.utime(incoming / f"{pass_id}.json", ns=(n * 10**9, (1000 + n) * 10**9))  # a second apart
        if n in (1, 3):  # the tee's rounds: after the second delivery, after the fourth
            Tee(incoming, [ops]).run_once()
    Tee(incoming, [ops, val]).run_once()  # the validation landing joins late: the whole backlog at once
    assert [p.name for p in complete_deliveries(incoming)] == arrived
    for target in (ops, val):
        assert [p.name for p in pending_files(target, "arrival")] == arrived
        assert [p.name for p in pending_files(target)] == sorted(arrived)
    with pytest.raises(ValueError, match="arrival"):
        pending_files(ops, "time")


def test_the_tee_command_once_and_as_a_service(dirs):
    incoming, ops, val = dirs
    p = _deliver(incoming, "P0008")
    base = [sys.executable, "-m", "pipeline.cli", "tee", str(incoming), "--to", str(ops), "--to", str(val)]
    res = subprocess.run([*base, "--once"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "P0008: copied to" in res.stdout and "2 copy(ies) made" in res.stdout
    proc = subprocess.Popen([*base, "--interval", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        q = _deliver(incoming, "P0009")
        deadline = time.monotonic() + 30
        sidecar = q.with_suffix(".json").name
        # both copies, and the round's report of them (printed when the round ends: a busy machine can
        # stop the tee between the copy and the report)
        while not ((ops / sidecar).exists() and (val / sidecar).exists()):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the tee did not copy the delivery in time"
            time.sleep(0.1)
        time.sleep(1.0)  # some rounds of 0.1 s
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "P0009: copied to" in out and "P0008" not in out
    assert sorted(f.name for f in ops.iterdir()) == sorted([p.name, p.with_suffix(".json").name, q.name,
                                                             q.with_suffix(".json").name])  # fmt: skip
