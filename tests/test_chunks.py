"""Time-ordered chunks against a real PostgreSQL: completeness, deadlines, revisions on late data."""

import os
import time

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest

from pipeline.chunks import ReductionPool, chunk_states, gap_chunks, reduce_due
from pipeline.db.server import THROWAWAY_SETTINGS, LocalServer
from pipeline.intake import ingest_file, pending_files
from pipeline.telemetry.decode import decode_pass

from .conftest import migrated_database


def _count_stars(conn, chunk_id, revision, packets):
    decoded = decode_pass(b"".join(packets))
    assert not decoded.problems  # the chunk's input is the ingested, valid packets
    return len(decoded.star["obt"])


def _tight_deadline(dsn, seconds=1800):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE soc_settings SET value = %s WHERE key = 'lateness_seconds'", (str(seconds),))
    return dsn


def _ingest(dsn, files):
    with psycopg.connect(dsn, autocommit=True) as conn:
        for f in files:
            ingest_file(conn, f)


def test_gaps_touch_the_chunks_around_the_missing_packet():
    apid = np.array([5, 5, 5, 5, 7, 7])
    seq = np.array([1, 2, 4, 5, 16383, 0])  # one packet missing between 2 and 4; 16383 -> 0 wraps
    obt = np.array([100.0, 1700.0, 1900.0, 4000.0, 10.0, 20.0])
    assert gap_chunks(apid, seq, obt, 1800.0) == {0: 1, 1: 1}


def test_packets_of_one_on_board_time_are_no_gap_in_any_order(new_db):
    """Star packets of several windows share an on-board time: within it, the sequence count orders them.
    (Read in another order, a complete chunk looked gapped and waited for its deadline, so two runs of the
    same telemetry could reduce it on different days.)"""
    from pipeline.chunks import _keys

    n = 400
    seq = np.arange(n)
    obt = 1000.0 + (seq // 2)  # pairs of packets at one on-board time
    with psycopg.connect(new_db(), autocommit=True) as conn:
        with conn.cursor().copy("COPY raw_packets (apid, seq, obt, chunk_id, packet) FROM STDIN") as copy:
            for i in reversed(range(n)):  # stored in the reverse order
                copy.write_row((20, int(seq[i]), float(obt[i]), 0, b"x"))
        apid, got_seq, got_obt = _keys(conn)
    assert np.array_equal(got_seq, seq) and np.array_equal(got_obt, obt)
    assert gap_chunks(apid, got_seq, got_obt, 1800.0) == {}


def test_complete_chunks_are_reduced_once_and_gaps_wait_for_the_deadline(faulty_day, new_db):
    dsn = new_db()
    _ingest(dsn, pending_files(faulty_day / "passes"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        states = {s.chunk_id: s for s in chunk_states(conn)}
        done = reduce_due(conn, _count_stars)
        assert done and reduce_due(conn, _count_stars) == []  # the same data twice changes nothing
        rows = conn.execute("SELECT chunk_id, revision, reason, gaps, n_transits FROM chunks").fetchall()
    assert {r[0] for r in rows} == {c for c, s in states.items() if s.complete or s.deadline_passed}
    assert all(r[1] == 1 for r in rows)
    reasons = {r[0]: r[2] for r in rows}
    lost = pq.read_table(faulty_day / "truth" / "packets.parquet").to_pandas()
    lost = lost[lost["fate"] == "lost_in_downlink"]
    gap_chunks_truth = set((lost["obt"] // 1800).astype(int))
    assert gap_chunks_truth, "the faulty day has packets lost in the downlink"
    for c in gap_chunks_truth & set(reasons):
        assert reasons[c] == "deadline"  # a chunk with a lost packet is never complete
    assert "complete" in reasons.values()
    assert sum(r[4] for r in rows) > 1000


def _current(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT chunk_id, input_digest, n_transits FROM current_chunks ORDER BY 1"
        ).fetchall()


def test_late_data_makes_a_new_revision_and_ends_where_in_order_ingest_ends(faulty_day, new_db):
    files = pending_files(faulty_day / "passes")
    reference = _tight_deadline(new_db())
    _ingest(reference, files)
    with psycopg.connect(reference, autocommit=True) as conn:
        reduce_due(conn, _count_stars)
    late_total = 0
    for held in [f for f in files if ".d" not in f.name]:  # hold back each first delivery in turn
        dsn = _tight_deadline(new_db())
        _ingest(dsn, [f for f in files if f != held])
        with psycopg.connect(dsn, autocommit=True) as conn:
            reduce_due(conn, _count_stars)
        _ingest(dsn, [held])
        with psycopg.connect(dsn, autocommit=True) as conn:
            second = reduce_due(conn, _count_stars)
            late = conn.execute("SELECT chunk_id, revision FROM chunks WHERE reason = 'late_data'").fetchall()
        assert sorted(late) == sorted((c, r) for c, r, why in second if why == "late_data")
        assert all(r >= 2 for _, r in late)
        late_total += len(late)
        assert _current(dsn) == _current(reference), held.name
    assert late_total > 0


@pytest.mark.parametrize("seed", [5])
def test_the_current_revisions_do_not_depend_on_arrival_order(faulty_day, new_db, seed):
    files = pending_files(faulty_day / "passes")
    digests = []
    for order in (np.arange(len(files)), np.random.default_rng(seed).permutation(len(files))):
        dsn = new_db()
        for i in order:
            _ingest(dsn, [files[i]])
            with psycopg.connect(dsn, autocommit=True) as conn:
                reduce_due(conn, _count_stars)
        with psycopg.connect(dsn) as conn:
            due_at_end = {st.chunk_id for st in chunk_states(conn) if st.complete or st.deadline_passed}
        digests.append((dict((c, (d, n)) for c, d, n in _current(dsn)), due_at_end))
    (first, due_first), (second, due_second) = digests
    assert due_first == due_second and due_first <= set(first) and due_first <= set(second)
    common = set(first) & set(second)
    assert len(common) >= len(due_first) > 5
    assert {c: first[c] for c in common} == {c: second[c] for c in common}


def _count_stars_where(conn, chunk_id, revision, packets):
    """_count_stars, recording the process that reduced the chunk (at once, on a connection of its own), and
    waiting until another process has recorded one too (60 s at most): both workers take part in a round,
    however long the other takes to start on a busy machine."""
    with psycopg.connect(conn.info.dsn, autocommit=True) as side:
        side.execute("INSERT INTO reduced_by VALUES (%s, %s)", (chunk_id, os.getpid()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if side.execute("SELECT count(DISTINCT pid) FROM reduced_by").fetchone()[0] >= 2:
                break
            time.sleep(0.1)
    return _count_stars(conn, chunk_id, revision, packets)


def _make_count_stars_where(conn):
    return _count_stars_where


def test_a_reduction_pool_keeps_its_workers_between_rounds_and_outlasts_a_server_restart(faulty_day):
    """A watcher's reduction rounds (pipeline.chunks.ReductionPool): the second round is reduced by the
    workers the first started, although the server restarted in between (their connections were lost), and
    the chunks end as one process reducing after each batch leaves them."""
    files = pending_files(faulty_day / "passes")
    batches = files[: len(files) // 3], files[len(files) // 3 :]
    with LocalServer(settings=THROWAWAY_SETTINGS) as server:
        dsns = [migrated_database(server, name, {"chunk_seconds": 1800, "healpix_order": 2})
                for name in ("soc_pool", "soc_one_process")]  # fmt: skip
        for dsn in dsns:
            _tight_deadline(dsn)
        with psycopg.connect(dsns[0], autocommit=True) as conn:
            conn.execute("CREATE TABLE reduced_by (chunk_id bigint, pid int)")
        rounds = []
        with ReductionPool(dsns[0], _make_count_stars_where, workers=2) as pool:
            for i, batch in enumerate(batches):
                _ingest(dsns[0], batch)
                if i:
                    server.stop()
                    server.start()
                done = pool.reduce_due()
                with psycopg.connect(dsns[0]) as conn:
                    pids = {p for (p,) in conn.execute("SELECT DISTINCT pid FROM reduced_by")}
                    conn.execute("DELETE FROM reduced_by")
                    conn.commit()
                rounds.append((done, pids - {os.getpid()}))
        for batch in batches:
            _ingest(dsns[1], batch)
            with psycopg.connect(dsns[1], autocommit=True) as conn:
                reduce_due(conn, _count_stars)
        pooled, one_process = _current(dsns[0]), _current(dsns[1])
    (first, first_workers), (second, second_workers) = rounds
    assert len(first) > 2 and len(second) > 2
    assert len(first_workers) == 1 and second_workers == first_workers  # one other worker, kept
    assert pooled == one_process


def test_parallel_handout_keeps_the_chunks_in_progress_together():
    """reduce_due_parallel's handout: every chunk once, in order, never `window` or more apart in progress."""
    import random
    import threading
    import time

    from pipeline.chunks import _Handout

    plan, lock = _Handout(60, 2), threading.Lock()
    running: set[int] = set()
    taken: list[int] = []
    spread: list[int] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        while (i := plan.take()) is not None:
            with lock:
                taken.append(i)
                running.add(i)
                spread.append(max(running) - min(running))
            time.sleep(rnd.uniform(0, 0.004))
            with lock:
                running.discard(i)
            plan.done(i)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(60)) and max(spread) == 1
    stopped = _Handout(5, 2)
    assert stopped.take() == 0
    stopped.stop()
    assert stopped.take() is None
