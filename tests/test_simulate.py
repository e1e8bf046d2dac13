"""End-to-end checks of `soc simulate`: determinism, accounting, faults, priorities, truth vs telemetry."""

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import instrument as ins
from pipeline.cli import main
from pipeline.simulate.run import SimConfig, simulate
from pipeline.telemetry.decode import decode_pass
from pipeline.telemetry.layout import is_star_apid
from pipeline.telemetry.passfile import read_pass

from .conftest import ALL_ANOMALIES, ALL_FAULTS

# the same configuration as the session fixture faulty_day in conftest.py
CFG = dict(start="2016-08-01", days=1.0, scale=0.0003, seed=11, progress=False)


@pytest.fixture(scope="module")
def faulty(faulty_day):
    return faulty_day, json.loads((faulty_day / "summary.json").read_text())


def _digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "summary.json"
    }


def _truth(out: Path, table: str):
    return pq.read_table(out / "truth" / f"{table}.parquet").to_pandas()


def test_same_seed_same_bytes(faulty, tmp_path):
    out, _ = faulty
    simulate(tmp_path, SimConfig(**CFG, faults=ALL_FAULTS, anomalies=ALL_ANOMALIES, downlink_margin=0.6))
    assert _digest(tmp_path) == _digest(out)
    other = tmp_path / "other"
    simulate(other, SimConfig(**{**CFG, "seed": 12}))
    assert _digest(other) != _digest(out)


def test_every_generated_packet_has_one_fate(faulty):
    out, summary = faulty
    packets = _truth(out, "packets")
    assert len(packets) == summary["counts"]["packets"]
    assert not packets.duplicated(["apid", "seq", "obt"]).any()
    fates = packets["fate"].value_counts().to_dict()
    assert set(fates) <= {"delivered", "lost_in_downlink", "truncated", "onboard_at_end"}
    assert fates.get("lost_in_downlink", 0) == summary["faults"]["gap"] > 0
    assert fates.get("truncated", 0) > 0


def test_pass_files_decode_and_every_problem_is_an_injected_fault(faulty):
    out, _ = faulty
    faults = _truth(out, "faults")
    packets = _truth(out, "packets")
    n_ok = n_problems = 0
    for sidecar in sorted((out / "passes").glob("*.json")):
        meta, data, checks = read_pass(sidecar.with_suffix(".tm"))
        decoded = decode_pass(data)
        pf = faults[faults["pass_id"] == meta.pass_id]
        flips = set(pf.loc[pf["kind"] == "bitflip", "file_offset"])
        cut = pf.loc[pf["kind"] == "truncate", "file_offset"]
        assert sum(p.length for p in decoded.problems) + int(decoded.packets["length"].sum()) == len(data)
        for prob in decoded.problems:
            if prob.reason.startswith("truncated") or prob.reason.startswith("unframed"):
                assert len(cut) and prob.offset >= cut.min(), prob
            else:
                assert prob.offset in flips, prob
        n_problems += len(decoded.problems)
        assert checks["size_ok"] == (not len(cut))
        # what decodes is exactly what truth says this pass delivered (plus injected duplicates)
        mine = packets[(packets["pass_id"] == meta.pass_id) & (packets["fate"] == "delivered")]
        got = set(zip(decoded.packets["apid"].tolist(), decoded.packets["seq"].tolist(), strict=True))
        want = set(zip(mine["apid"].tolist(), mine["seq"].tolist(), strict=True))
        flipped = set(
            zip(pf.loc[pf["kind"] == "bitflip", "apid"], pf.loc[pf["kind"] == "bitflip", "seq"], strict=True)
        )
        assert got <= want and want - got <= flipped
        n_ok += len(decoded.packets)
    assert n_ok > 1000 and n_problems > 0


def test_priorities_inside_a_pass_and_backlog_across_passes(faulty):
    out, _ = faulty
    packets = _truth(out, "packets")
    delivered = packets[packets["fate"] != "onboard_at_end"].sort_values(["pass_id", "file_offset"])
    kinds = np.where(
        delivered["apid"] < 0x20,
        0,
        np.where(delivered["apid"] < 0x100, 1, 2 + ((delivered["apid"].to_numpy() >> 4) & 0x3)),
    )
    delivered = delivered.assign(priority=kinds)
    for _, p in delivered[delivered["file_offset"] >= 0].groupby("pass_id"):
        assert (np.diff(p["priority"].to_numpy()) >= 0).all()
    contacts = _truth(out, "contacts").sort_values("aos")
    assert (contacts["backlog_packets"] > 0).any()
    # data carried over: a later pass holds packets older than the end of an earlier pass
    first_gen = delivered.groupby("pass_id")["t_generated"].min()
    last_gen = delivered.groupby("pass_id")["t_generated"].max()
    ordered = contacts["pass_id"].tolist()
    assert any(first_gen[b] < last_gen[a] for a, b in itertools.pairwise(ordered))


def test_star_packets_match_their_transits(faulty):
    out, _ = faulty
    transits = _truth(out, "transits")
    tele = transits[transits["fate"] == "telemetered"].set_index(["apid", "seq", "obt_af1"])
    sidecar = sorted((out / "passes").glob("*.json"))[0]
    _, data, _ = read_pass(sidecar.with_suffix(".tm"))
    star = decode_pass(data).star
    assert len(star["obt"]) > 100
    matched = 0
    for i in range(0, len(star["obt"]), 37):
        rows = tele.loc[(int(star["apid"][i]), int(star["seq"][i]))]
        row = rows.iloc[np.argmin(np.abs(rows.index.to_numpy() - star["obt"][i]))]
        assert abs(row.name - star["obt"][i]) < 1e-6
        assert star["n_samples"][i] == row["n_samples"] and star["gate"][i] == row["gate"]
        assert star["row"][i] == row["row"] and star["fov"][i] == row["fov"]
        peak = int(np.argmax(star["samples"][i, 4, : star["n_samples"][i]]))
        if row["flux_ccd"] > 2000 and not row["saturated"]:
            assert abs(peak + 0.5 - row["x0"][4]) < 1.6
        matched += 1
    assert matched > 3


def test_truth_records_events_anomalies_and_onboard_losses(faulty):
    out, summary = faulty
    transits = _truth(out, "transits")
    fates = transits["fate"].value_counts(normalize=True)
    assert abs(fates["onboard_deleted"] - ins.ONBOARD_LOSS_FRACTION) < 0.02
    assert set(transits["origin"]) >= {0, 1}
    events = _truth(out, "events")
    assert len(events) == summary["events"] > 0
    assert set(events["event_id"]) == set(transits.loc[transits["event_id"] != 0, "event_id"])
    anomalies = _truth(out, "anomalies")
    assert sorted(anomalies["kind"]) == sorted(ALL_ANOMALIES)


def test_the_cli_prints_a_summary_and_rejects_unknown_faults(tmp_path, capsys):
    assert (
        main(
            [
                "simulate",
                "--start",
                "2016-08-01",
                "--days",
                "0.05",
                "--scale",
                "0.0002",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "transits" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["counts"]["passes"] >= 0
    with pytest.raises(SystemExit):
        main(["simulate", "--out", str(tmp_path), "--faults", "gremlins"])


def test_star_apids_are_in_their_own_range():
    assert is_star_apid(np.array([0x100, 0x12E])).all() and not is_star_apid(np.array([0x010, 0x021])).any()
