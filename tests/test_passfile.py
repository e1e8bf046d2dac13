"""Per-pass delivery files and their JSON sidecars."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline.telemetry.encode import encode_hk_power
from pipeline.telemetry.passfile import (
    FORMAT,
    PassMeta,
    list_passes,
    pass_meta_for,
    read_pass,
    write_pass,
)


def a_pass(n=20):
    batch = encode_hk_power(2e7 + np.arange(n), np.arange(n), np.ones((n, 8)))
    data = batch.tobytes()
    meta = pass_meta_for(
        "KIR",
        "KIR-2026-321-01",
        "2026-11-17T10:00:00Z",
        "2026-11-17T10:45:00Z",
        "2026-11-17T10:46:10Z",
        data,
        n,
    )
    return meta, data


def test_meta_fields():
    meta, data = a_pass()
    assert meta.format == FORMAT == "soc-telemetry-pass/1"
    assert (meta.station, meta.pass_id, meta.delivery) == ("KIR", "KIR-2026-321-01", 1)
    assert meta.packet_count == 20 and meta.byte_count == len(data)
    assert meta.sha256 == hashlib.sha256(data).hexdigest()
    m2 = pass_meta_for("KIR", "P", 0.0, 60.0, 61.5, data, 20, delivery=2)
    assert m2.aos_utc == "2010-01-01T00:00:00.000000Z" and m2.reception_utc.endswith("01:01.500000Z")


def test_round_trip(tmp_path):
    meta, data = a_pass()
    path = write_pass(tmp_path, meta, data)
    assert path.name == "KIR-2026-321-01.tm"
    assert (tmp_path / "KIR-2026-321-01.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["KIR-2026-321-01.json", "KIR-2026-321-01.tm"]
    got_meta, got_data, checks = read_pass(path)
    assert got_meta == meta and got_data == data
    assert checks.ok and checks.size_ok and checks.sha256_ok and not checks.truncated
    assert checks["size_ok"] and checks["sha256_ok"] and dict(checks)["actual_bytes"] == len(data)
    assert read_pass(tmp_path / "KIR-2026-321-01.json")[0] == meta  # by the sidecar's path as well
    assert list_passes(tmp_path) == [path]


def test_repeated_delivery_name(tmp_path):
    meta, data = a_pass()
    again = pass_meta_for(
        meta.station, meta.pass_id, meta.aos_utc, meta.los_utc, "2026-11-18T08:00:00Z", data, 20, delivery=3
    )
    path = write_pass(tmp_path, again, data)
    assert path.name == "KIR-2026-321-01.d3.tm" and (tmp_path / "KIR-2026-321-01.d3.json").exists()
    assert read_pass(path)[0].delivery == 3


def test_sidecar_is_deterministic(tmp_path):
    meta, data = a_pass()
    a = write_pass(tmp_path / "a", meta, data).with_suffix(".json").read_bytes()
    b = write_pass(tmp_path / "b", PassMeta(**json.loads(a)), data).with_suffix(".json").read_bytes()
    assert a == b == meta.to_json().encode()
    keys = list(json.loads(a))
    assert keys == sorted(keys) and a.endswith(b"\n") and b'  "byte_count": ' in a


def test_truncated_file_is_reported_not_raised(tmp_path):
    meta, data = a_pass()
    path = write_pass(tmp_path, meta, data[:-10])  # the transfer lost the tail
    got_meta, got_data, checks = read_pass(path)
    assert got_meta == meta and got_data == data[:-10]
    assert not checks.ok and not checks.size_ok and not checks.sha256_ok and checks.truncated
    assert (checks.expected_bytes, checks.actual_bytes) == (len(data), len(data) - 10)
    corrupted = bytearray(data)
    corrupted[5] ^= 1
    path.write_bytes(bytes(corrupted))
    checks = read_pass(path)[2]
    assert checks.size_ok and not checks.sha256_ok and not checks.ok


def test_incomplete_delivery_has_no_sidecar(tmp_path):
    _, data = a_pass()
    (tmp_path / "KIR-2026-321-01.tm").write_bytes(data)
    assert list_passes(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        read_pass(tmp_path / "KIR-2026-321-01.tm")


def test_bad_names_and_sidecars(tmp_path):
    _, data = a_pass()
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            pass_meta_for("KIR", bad, "a", "b", "c", data, 1)
    with pytest.raises(ValueError):
        pass_meta_for("KIR", "P", "a", "b", "c", data, 1, delivery=0)
    meta, data = a_pass()
    path = write_pass(tmp_path, meta, data)
    side = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**side, "format": "other/9"}))
    with pytest.raises(ValueError, match="format"):
        read_pass(path)
