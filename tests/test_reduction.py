"""The daily pipeline end to end against simulator truth: telemetry -> intake -> chunks -> image
parameters -> sky positions -> cross-match -> Main Database, with payload health."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest

from pipeline.chunks import reduce_due, reduce_due_parallel
from pipeline.cli import main
from pipeline.db.checksums import checksums, table_checksum
from pipeline.distribute import verify_product
from pipeline.intake import ingest_file, pending_files
from pipeline.mission_time import obt_of
from pipeline.reduce.crossmatch import is_new_source_id
from pipeline.reduction import ChunkReducer, ReductionError, WorkingCatalogue, make_reducer
from pipeline.simulate.run import SimConfig, simulate
from pipeline.telemetry.layout import APID_AUX_TIMECORR

from .conftest import ALL_ANOMALIES, migrated_database

SEED, SCALE, CHUNK_S = 11, 0.0003, 1800


@pytest.fixture(scope="module")
def roomy_day(tmp_path_factory):
    """Every anomaly and the in-pass faults, a downlink with room to spare (every chunk completes) and
    more new sources than the default so that they are sure to show."""
    out = tmp_path_factory.mktemp("roomy-day")
    simulate(out, SimConfig(start="2016-08-01", days=1.0, scale=SCALE, seed=SEED, progress=False,
                            faults=("gap", "duplicate", "bitflip"), anomalies=ALL_ANOMALIES,
                            downlink_margin=3.0, new_source_density=3000.0))  # fmt: skip
    return out


def _database(pg_server, name: str) -> str:
    """A fresh, initialised database for the simulated day's settings (a tight lateness deadline)."""
    settings = {"chunk_seconds": CHUNK_S, "healpix_order": 2, "catalogue_seed": SEED,
                "catalogue_scale": SCALE, "lateness_seconds": 600}  # fmt: skip
    return migrated_database(pg_server, name, settings)


@pytest.fixture(scope="module")
def outbox(tmp_path_factory):
    return tmp_path_factory.mktemp("outbox")


@pytest.fixture(scope="module")
def reduced(roomy_day, pg_server, outbox):
    dsn = _database(pg_server, "soc_reduced")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for f in pending_files(roomy_day / "passes"):
            ingest_file(conn, f)
        reducer = ChunkReducer(WorkingCatalogue.from_settings(conn), outbox=outbox)
        done = reduce_due(conn, reducer)
    assert done
    return dsn


def _frame(dsn, query):
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(query)
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


@pytest.fixture(scope="module")
def joined(roomy_day, reduced):
    """Truth transits that reached the ground intact in reduced chunks, joined to the database rows."""
    truth = pq.read_table(roomy_day / "truth" / "transits.parquet").to_pandas()
    truth = truth[truth["fate"] == "telemetered"]
    ingested = _frame(
        reduced, "SELECT apid, seq, obt AS obt_packet FROM packet_ledger WHERE status = 'ingested'"
    )
    truth = truth.merge(ingested, on=["apid", "seq"])
    truth = truth[np.abs(truth["obt_packet"] - truth["obt_af1"]) < 1e-3]
    chunks = _frame(reduced, "SELECT chunk_id FROM current_chunks")["chunk_id"]
    truth = truth[(truth["obt_af1"] // CHUNK_S).isin(chunks)]
    db = _frame(reduced, "SELECT apid, seq, obt, source_id AS db_source, g_mag, ra AS db_ra, dec AS db_dec,"
                         " flags FROM transits")  # fmt: skip
    both = truth.merge(db, on=["apid", "seq"], how="left")
    both = both[both["obt"].isna() | (np.abs(both["obt"] - both["obt_af1"]) < 60)]
    return truth, db, both


def test_every_transit_received_is_in_the_database_with_the_right_source(joined):
    truth, db, both = joined
    assert len(truth) > 3000
    known = both[both["origin"] != 2]
    completeness = (known["db_source"] == known["source_id"]).sum() / len(known)
    found = known[known["db_source"].notna()]
    purity = (found["db_source"] == found["source_id"]).mean()
    assert completeness >= 0.999 and purity >= 0.999, (completeness, purity)
    assert len(db) == both["db_source"].notna().sum()  # nothing in the database that was not observed


def test_injected_new_sources_become_new_sources(joined):
    _, _, both = joined
    new = both[both["origin"] == 2]
    assert len(new) >= 5, "the simulated day should have new-source transits"
    assert is_new_source_id(new["db_source"].to_numpy().astype(np.int64)).all()
    # one pipeline source per simulated new source
    per_truth = new.groupby("source_id")["db_source"].nunique()
    assert (per_truth == 1).mean() >= 0.9


def test_positions_and_photometry_agree_with_truth(joined):
    _, _, both = joined
    ok = both[both["db_source"].notna() & (both["origin"] != 2)]
    dra = (ok["db_ra"] - ok["ra"]) * np.cos(np.deg2rad(ok["dec"])) * 3.6e6
    ddec = (ok["db_dec"] - ok["dec"]) * 3.6e6
    sep = np.hypot(dra, ddec)
    assert np.median(sep) < 100.0 and np.percentile(sep, 99) < 300.0  # mas: AC pixel quantisation dominates
    good = ok[(ok["flags"] == 0) & (ok["g_true"] < 19)]
    dg = good["g_mag"] - good["g_true"]
    assert abs(dg.median()) < 0.01 and 1.4826 * (dg - dg.median()).abs().median() < 0.03


def test_every_injected_anomaly_raises_a_health_event_where_it_happens(roomy_day, reduced):
    anomalies = pq.read_table(roomy_day / "truth" / "anomalies.parquet").to_pandas()
    events = _frame(reduced, "SELECT chunk_id, severity, kind FROM health_events")
    serious = events[events["severity"].isin(["error", "critical"])]
    kinds = {"temperature_excursion": "temperature", "bias_jump": "bias", "focus_drift": "lsf"}
    for a in anomalies.itertuples():
        chunk = int(obt_of(a.t_start) // CHUNK_S)
        near = serious[serious["chunk_id"].between(chunk, chunk + 1)]
        assert near["kind"].str.contains(kinds[a.kind]).any(), (a.kind, chunk, near)
    # nothing serious far from the anomalies
    spans = [
        (int(obt_of(a.t_start) // CHUNK_S), int(obt_of(min(a.t_end, a.t_start + 6 * 3600)) // CHUNK_S) + 1)
        for a in anomalies.itertuples()
    ]
    lonely = serious[~serious["chunk_id"].apply(lambda c: any(lo <= c <= hi for lo, hi in spans))]
    assert lonely[~lonely["kind"].str.contains("bias")].empty, (
        lonely
    )  # a bias jump persists until re-referenced


def test_every_chunk_revision_is_a_verified_downstream_product(reduced, outbox):
    chunks = _frame(reduced, "SELECT chunk_id, revision, n_transits FROM current_chunks")
    manifests = sorted(outbox.glob("*.manifest.json"))
    assert len(manifests) == len(chunks) > 10
    for m in manifests:
        result = verify_product(m)
        assert result.ok, result.line()
    rows = {(r.chunk_id, r.revision): r.n_transits for r in chunks.itertuples()}
    for m in manifests:
        meta = json.loads(m.read_text())
        assert meta["row_count"] == rows[(meta["chunk_id"], meta["revision"])]
    assert main(["verify-product", "--outbox", str(outbox)]) == 0


def test_products_a_stopped_reducer_did_not_publish_are_published_by_the_next_reduction(
    roomy_day, pg_server, reduced, outbox, tmp_path
):
    """A reducer that stops after each revision commits, before its product is written (as a process
    killed there would): the next reduction, with nothing left to reduce, publishes every one of them,
    byte for byte the products of an uninterrupted run, and records them; once."""
    dsn = _database(pg_server, "soc_unpublished")

    class StoppedAfterCommit(ChunkReducer):
        def committed(self, conn, chunk_id, revision, input_digest):
            self._pending.pop((chunk_id, revision))

    later = tmp_path / "outbox"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for f in pending_files(roomy_day / "passes"):
            ingest_file(conn, f)
        done = reduce_due(conn, StoppedAfterCommit(WorkingCatalogue.from_settings(conn), outbox=later))
        assert done and not later.exists()
        unpublished = conn.execute("SELECT chunk_id, revision FROM chunks WHERE NOT published").fetchall()
        assert sorted(unpublished) == sorted((c, r) for c, r, _ in done)

        reducer = ChunkReducer(WorkingCatalogue.from_settings(conn), outbox=later)
        assert reduce_due(conn, reducer) == []  # nothing to reduce, but the products published
        assert conn.execute("SELECT count(*) FROM chunks WHERE NOT published").fetchone() == (0,)
        assert reducer.recover(conn) == []
    published = {p.name: p.read_bytes() for p in later.iterdir()}
    assert published == {p.name: p.read_bytes() for p in outbox.iterdir()}
    assert len(published) == 2 * len(done)


def test_a_chunk_revision_is_one_transaction(roomy_day, pg_server):
    dsn = _database(pg_server, "soc_rollback")

    class Failing(ChunkReducer):
        def _health(self, *a, **k):
            raise ReductionError("injected failure after the transits were written")

    with psycopg.connect(dsn, autocommit=True) as conn:
        for f in pending_files(roomy_day / "passes")[:1]:
            ingest_file(conn, f)
        with pytest.raises(ReductionError, match="injected"):
            reduce_due(conn, Failing(WorkingCatalogue.from_settings(conn)))
        assert conn.execute("SELECT count(*) FROM transits").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0
        assert reduce_due(conn, ChunkReducer(WorkingCatalogue.from_settings(conn)))  # and it recovers


def test_a_chunk_due_before_its_time_correlation_came_down_waits_for_it(roomy_day, pg_server):
    """A chunk reduced at its deadline whose time-correlation packets are still on their way (another pass
    brings them) gets a revision without transits, the other chunks are reduced all the same, and the
    packets' arrival makes the revision with its transits (late data)."""
    dsn = _database(pg_server, "soc_no_timecorr")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for f in pending_files(roomy_day / "passes"):
            ingest_file(conn, f)
        (chunk,) = conn.execute(  # one in the middle of the day: the missing packets show as a sequence gap
            "SELECT floor(percentile_disc(0.5) WITHIN GROUP (ORDER BY obt) / %s)::bigint FROM raw_packets"
            " WHERE apid BETWEEN 256 AND 511", (CHUNK_S,),  # the star packets (APIDs 0x1xx)
        ).fetchone()  # fmt: skip
        window = ((chunk - 1) * CHUNK_S, (chunk + 2) * CHUNK_S)  # the chunk's and its context margins
        conn.execute("CREATE TEMP TABLE on_their_way AS SELECT * FROM raw_packets WITH NO DATA")
        conn.execute(
            "WITH d AS (DELETE FROM raw_packets WHERE apid = %s AND obt >= %s AND obt < %s RETURNING *)"
            " INSERT INTO on_their_way SELECT * FROM d", (APID_AUX_TIMECORR, *window),
        )  # fmt: skip
        assert conn.execute("SELECT count(*) FROM on_their_way").fetchone()[0] > 2

        first = reduce_due(conn, ChunkReducer(WorkingCatalogue.from_settings(conn)))
        rows = dict(conn.execute("SELECT chunk_id, n_transits FROM current_chunks").fetchall())
        assert (chunk, 1, "deadline") in first and rows[chunk] == 0
        assert sum(rows.values()) > 1000  # the other chunks have their transits

        conn.execute("INSERT INTO raw_packets SELECT * FROM on_their_way")
        again = reduce_due(conn, ChunkReducer(WorkingCatalogue.from_settings(conn)))
        assert (chunk, 2, "late_data") in again
        (n,) = conn.execute("SELECT n_transits FROM current_chunks WHERE chunk_id = %s", (chunk,)).fetchone()
        assert n > 0


def test_a_killed_reduction_resumes_without_loss_or_duplicates(roomy_day, pg_server, reduced):
    dsn = _database(pg_server, "soc_killed")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for f in pending_files(roomy_day / "passes"):
            ingest_file(conn, f)
    cmd = [sys.executable, "-m", "pipeline.cli", "reduce", "--dsn", dsn]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    with psycopg.connect(dsn, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM chunks").fetchone()[0] < 2:
            assert time.monotonic() < deadline and proc.poll() is None, (
                "reduce ended before it could be killed"
            )
            time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    with psycopg.connect(dsn) as a, psycopg.connect(reduced) as b:
        for table in ("transits", "sources", "health_events"):
            assert table_checksum(a, table) == table_checksum(b, table), table
        assert a.execute("SELECT count(*) FROM chunks WHERE revision > 1").fetchone()[0] == 0


# A transit of a source the reduction added (an anti- or semi-join: `source_id NOT IN (subquery)` runs the
# subquery over every sources partition once for each transits partition, 52 s of a 97 s test).
_NEW_SOURCE = (
    "SELECT FROM sources s WHERE s.healpix = t.healpix AND s.source_id = t.source_id AND s.origin = 'new'"
)


def test_two_workers_give_what_one_worker_gives(roomy_day, pg_server, reduced):
    dsn = _database(pg_server, "soc_parallel")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for f in pending_files(roomy_day / "passes"):
            ingest_file(conn, f)
    done = reduce_due_parallel(dsn, make_reducer, workers=2)
    with psycopg.connect(dsn) as a, psycopg.connect(reduced) as b:
        assert len(done) == b.execute("SELECT count(*) FROM chunks").fetchone()[0]
        # transits of catalogue sources are identical; a new source seen by two chunks reduced at the same
        # time can get two ids (docs/pipeline.md, known limits), so those are compared by count
        known = f"SELECT * FROM transits t WHERE NOT EXISTS ({_NEW_SOURCE})"
        rows_a = sorted(a.execute(known).fetchall())
        rows_b = sorted(b.execute(known).fetchall())
        assert rows_a == rows_b and len(rows_a) > 3000
        count = "SELECT count(*) FROM transits"
        assert a.execute(count).fetchone() == b.execute(count).fetchone()


def test_any_arrival_order_then_a_flush_gives_the_same_science(roomy_day, pg_server):
    files = pending_files(roomy_day / "passes")
    orders = {"soc_order_a": list(range(len(files))), "soc_order_b": list(reversed(range(len(files))))}
    dsns = {}
    for name, order in orders.items():
        dsn = dsns[name] = _database(pg_server, name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in order:  # reduce after every delivery, as operations do
                ingest_file(conn, files[i])
                reduce_due(conn, ChunkReducer(WorkingCatalogue.from_settings(conn)))
            flushed = reduce_due(conn, ChunkReducer(WorkingCatalogue.from_settings(conn)), flush=True)
            assert reduce_due(conn, ChunkReducer(WorkingCatalogue.from_settings(conn)), flush=True) == []
        assert all(reason in ("flush", "late_data", "deadline", "complete") for _, _, reason in flushed)
    columns = (
        "source_id, obt, t, chunk_id, apid, seq, fov, ccd_row, ac_pixel, ra, dec, pos_err_mas, g_flux,"
        " g_flux_err, g_mag, g_mag_err, n_good, flags, match_dist_mas, ambiguous"
    )  # all but revision
    queries = {
        "intake": None,
        "chunks": "SELECT chunk_id, input_digest FROM current_chunks ORDER BY 1",
        "catalogue transits": f"SELECT {columns} FROM transits t WHERE NOT EXISTS ({_NEW_SOURCE})"
        " ORDER BY 1, 2",
        "new-source transits": f"SELECT count(*) FROM transits t WHERE EXISTS ({_NEW_SOURCE})",
        "catalogue sources": "SELECT * FROM sources WHERE origin = 'catalogue' ORDER BY source_id",
        "health events": "SELECT e.chunk_id, kind, severity, ccd_row, ccd_column, t_start_obt, value, detail"
        " FROM health_events e JOIN current_chunks c USING (chunk_id, revision) ORDER BY 1, 2, 4, 5, 6",
    }
    results = []
    for dsn in dsns.values():
        with psycopg.connect(dsn) as conn:
            got = {k: conn.execute(q).fetchall() for k, q in queries.items() if q}
            got["intake"] = checksums(conn)
            results.append(got)
    a, b = results
    assert len(a["catalogue transits"]) > 3000
    for k in queries:
        assert a[k] == b[k], k
