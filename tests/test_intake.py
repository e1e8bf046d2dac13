"""Intake against a real PostgreSQL: every packet accounted for, only bad ones quarantined, order-proof."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest

from pipeline.db.checksums import checksums
from pipeline.intake import IntakeError, ingest_file, pending_files


def _files(day: Path) -> list[Path]:
    return pending_files(day / "passes")


def _ingest_all(dsn: str, files) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for f in files:
            ingest_file(conn, f)


@pytest.fixture(scope="module")
def truth(faulty_day):
    return {
        t: pq.read_table(faulty_day / "truth" / f"{t}.parquet").to_pandas() for t in ("packets", "faults")
    }


@pytest.fixture
def ingested(faulty_day, new_db):
    dsn = new_db()
    _ingest_all(dsn, _files(faulty_day))
    return dsn


def test_the_ledger_accounts_for_every_byte_and_every_packet_received(faulty_day, ingested, truth):
    packets, faults = truth["packets"], truth["faults"]
    with psycopg.connect(ingested) as conn:
        for f in _files(faulty_day):
            covered = conn.execute(
                "SELECT sum(length) FROM packet_ledger WHERE file_name = %s", (f.name,)
            ).fetchone()[0]
            assert covered == f.stat().st_size, f.name
        ingested_keys = set(
            conn.execute("SELECT apid, seq, obt FROM packet_ledger WHERE status = 'ingested'")
        )
        n_dup = conn.execute("SELECT count(*) FROM packet_ledger WHERE status = 'duplicate'").fetchone()[0]
        raw = conn.execute("SELECT count(*) FROM raw_packets").fetchone()[0]
    delivered = packets[packets["fate"] == "delivered"]
    flipped = set(
        zip(*(faults.loc[faults["kind"] == "bitflip", c] for c in ("apid", "seq", "obt")), strict=True)
    )
    want = set(zip(delivered["apid"], delivered["seq"], delivered["obt"], strict=True))
    # every delivered packet is ingested once, unless its only copies were corrupted
    assert ingested_keys <= want and len(want - ingested_keys) <= len(flipped)
    assert {k for k in want - ingested_keys} <= flipped
    assert raw == len(ingested_keys)
    # duplicates: the in-pass repeats plus the whole repeated pass
    n_repeat = faults.loc[faults["kind"] == "duplicate"].shape[0]
    assert n_dup >= n_repeat > 0


def test_every_quarantined_packet_is_a_truly_bad_one(faulty_day, ingested, truth):
    faults = truth["faults"]
    with psycopg.connect(ingested) as conn:
        rows = conn.execute(
            "SELECT q.file_name, q.byte_offset, q.reason, d.pass_id"
            " FROM quarantine q JOIN deliveries d USING (file_name)"
        ).fetchall()
        n_ledger = conn.execute("SELECT count(*) FROM packet_ledger WHERE status = 'quarantined'").fetchone()[
            0
        ]
    assert len(rows) == n_ledger > 0
    for file_name, offset, reason, pass_id in rows:
        mine = faults[faults["pass_id"] == pass_id]
        if reason.startswith(("truncated", "unframed")):
            cut = mine.loc[mine["kind"] == "truncate", "file_offset"]
            assert len(cut) and offset >= cut.min(), (file_name, offset, reason)
        else:
            assert offset in set(mine.loc[mine["kind"] == "bitflip", "file_offset"]), (
                file_name,
                offset,
                reason,
            )
    flips = faults[faults["kind"] == "bitflip"]
    assert len(flips) and len(rows) >= len(flips["file_offset"].unique())


def test_truncated_files_are_flagged_against_their_sidecar(faulty_day, ingested):
    with psycopg.connect(ingested) as conn:
        short = conn.execute("SELECT file_name FROM deliveries WHERE NOT size_ok").fetchall()
        reasons = conn.execute("SELECT reason FROM quarantine WHERE reason LIKE 'truncated%'").fetchall()
    assert short and reasons


def test_any_order_or_twice_gives_identical_content(faulty_day, ingested, new_db):
    with psycopg.connect(ingested) as conn:
        reference = checksums(conn)
    files = _files(faulty_day)
    shuffled = new_db()
    order = np.random.default_rng(3).permutation(len(files))
    _ingest_all(shuffled, [files[i] for i in order] + files)  # shuffled, then everything again
    with psycopg.connect(shuffled) as conn:
        assert checksums(conn) == reference
        assert conn.execute("SELECT count(*) FROM ingest_log WHERE outcome = 'already_ingested'").fetchone()[
            0
        ] == len(files)


def test_the_same_name_with_other_content_is_refused(faulty_day, ingested, tmp_path):
    f = _files(faulty_day)[0]
    altered = tmp_path / f.name
    altered.write_bytes(f.read_bytes()[:-10])
    altered.with_suffix(".json").write_bytes(f.with_suffix(".json").read_bytes())
    with (
        psycopg.connect(ingested, autocommit=True) as conn,
        pytest.raises(IntakeError, match="other content"),
    ):
        ingest_file(conn, altered)
    lonely = tmp_path / "lonely.tm"
    lonely.write_bytes(b"\x00" * 10)
    with psycopg.connect(ingested, autocommit=True) as conn, pytest.raises(IntakeError, match="sidecar"):
        ingest_file(conn, lonely)
    with psycopg.connect(ingested) as conn, pytest.raises(IntakeError, match="autocommit"):
        ingest_file(conn, f)


def test_a_killed_ingest_resumes_without_loss_or_duplicates(faulty_day, ingested, new_db):
    with psycopg.connect(ingested) as conn:
        reference = checksums(conn)
    dsn = new_db()
    files = [str(f) for f in _files(faulty_day)]
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", "--dsn", dsn, *files]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    with psycopg.connect(dsn, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] < 1:  # one file committed
            assert time.monotonic() < deadline and proc.poll() is None, (
                "ingest ended before it could be killed"
            )
            time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with psycopg.connect(dsn) as conn:
        partial = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    assert 1 <= partial < len(files)
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    with psycopg.connect(dsn) as conn:
        assert checksums(conn) == reference


def test_ledger_rows_must_name_a_delivery(faulty_day, new_db):
    # checked once per statement (migration 0006), in both directions, as the foreign key it replaced
    files = _files(faulty_day)
    with psycopg.connect(new_db(), autocommit=True) as conn:
        ingest_file(conn, files[0])
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match=r"nope\.tm"):
            conn.execute(
                "INSERT INTO packet_ledger (file_name, byte_offset, length, status)"
                " VALUES ('nope.tm', 0, 1, 'duplicate')"
            )
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("DELETE FROM deliveries WHERE file_name = %s", (files[0].name,))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                "UPDATE deliveries SET file_name = 'renamed.tm' WHERE file_name = %s", (files[0].name,)
            )
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("UPDATE packet_ledger SET file_name = 'nope.tm' WHERE byte_offset = 0")
        conn.execute("UPDATE deliveries SET station = station")  # names unchanged: allowed
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1
