"""The alerts system's operations on a real database: a simulated day, ingested and reduced in two halves,
scanned by alerts runs (the run record, the candidates, idempotence, new chunk revisions, a failed run,
two runs at once), the per-pixel scan against the per-source one, the neighbour geometry, the candidates'
life cycle, the Gaia name scheme, and the `soc alerts` commands."""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path

import healpy as hp
import numpy as np
import psycopg
import pytest

from pipeline import __version__
from pipeline.alerts import names
from pipeline.alerts.candidates import (
    FLOW,
    STATUSES,
    TransitionError,
    assess,
    get_candidate,
    list_candidates,
    publish_assessed,
    publish_candidate,
    reject,
    transitions,
)
from pipeline.alerts.run import RUN_LOCK, AlertsRunError, pending_revisions, run_alerts
from pipeline.alerts.scan import (
    RunContext,
    brighter_neighbours,
    default_workers,
    fetch_pixel,
    neighbour_cells,
    new_sources_by_pixel,
    scan,
    server_cores,
)
from pipeline.alerts.thresholds import load_thresholds
from pipeline.chunks import reduce_due
from pipeline.cli import main
from pipeline.db.load import healpix_shift, load_transits
from pipeline.intake import ingest_file, pending_files
from pipeline.reduction import make_reducer
from pipeline.simulate.run import SimConfig, simulate

from .conftest import migrated_database

SEED, SCALE, ORDER = 5, 0.0003, 2
REAL_ALERTS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gaia-alerts" / "alerts.csv"
ALERT_TABLES = ("alert_runs", "alert_run_chunks", "alert_candidates", "alert_transitions", "alert_names")


def _passes(day: Path, first_half: bool) -> list[Path]:
    """The passes whose contact began before (or from) 12:00 UTC of the simulated day."""
    out = []
    for f in pending_files(day / "passes"):
        aos = json.loads(f.with_suffix(".json").read_text())["aos_utc"]
        if (aos < "2016-08-01T12:00") == first_half:
            out.append(f)
    return out


def _database(pg_server, name: str) -> str:
    settings = {"chunk_seconds": 1800, "healpix_order": ORDER, "catalogue_seed": SEED,
                "catalogue_scale": SCALE, "lateness_seconds": 600}  # fmt: skip
    return migrated_database(pg_server, name, settings)


def _ingest_and_reduce(dsn: str, files: list[Path]) -> list:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for f in files:
            ingest_file(conn, f)
        return reduce_due(conn, make_reducer(conn))


def _copy_db(pg_server, source: str, name: str) -> str:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {source}")
    return pg_server.dsn(name)


def _counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ALERT_TABLES}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, pg_server):
    """A simulated day with photometric events and new sources: its first half ingested, reduced and
    scanned (run 1), scanned again (nothing new), then the second half (run 2), then one chunk re-loaded
    as a new revision (run 3). `fresh` is a copy of the database before any alerts run."""
    day = tmp_path_factory.mktemp("alerts-day")
    simulate(day, SimConfig(start="2016-08-01", days=1.0, scale=SCALE, seed=SEED, progress=False,
                            downlink_margin=3.0, event_rate=0.05, new_source_density=3000.0))  # fmt: skip
    dsn = _database(pg_server, "soc_alerts_ops")
    assert _ingest_and_reduce(dsn, _passes(day, True))
    fresh = _copy_db(pg_server, "soc_alerts_ops", "soc_alerts_fresh")
    s = {"dsn": dsn, "fresh": fresh}
    with psycopg.connect(dsn) as conn:
        s["loaded1"] = conn.execute("SELECT chunk_id, revision, pixels FROM transit_chunks").fetchall()
        pixels = sorted({p for _, _, ps in s["loaded1"] for p in ps})
        s["truth1"] = conn.execute(
            "SELECT count(DISTINCT source_id), count(*) FROM transits WHERE healpix = ANY(%s)", (pixels,)
        ).fetchone()
    s["run1"] = run_alerts(dsn, workers=2)
    s["counts1"] = _counts(dsn)
    s["run1_again"] = run_alerts(dsn, workers=2)
    s["counts1_again"] = _counts(dsn)
    assert _ingest_and_reduce(dsn, _passes(day, False))
    with psycopg.connect(dsn) as conn:
        s["loaded2"] = conn.execute("SELECT chunk_id, revision FROM transit_chunks").fetchall()
    s["run2"] = run_alerts(dsn, workers=1)
    with psycopg.connect(dsn) as conn:  # chunk re-reduced: the same rows loaded again as a new revision
        chunk_id, revision = conn.execute(
            "SELECT chunk_id, revision FROM transit_chunks ORDER BY n_transits DESC, chunk_id LIMIT 1"
        ).fetchone()
        cols = ("source_id", "obt", "t", "apid", "seq", "fov", "ccd_row", "ac_pixel", "ra", "dec",
                "pos_err_mas", "g_flux", "g_flux_err", "g_mag", "g_mag_err", "n_good", "flags",
                "match_dist_mas", "ambiguous")  # fmt: skip
        (pixels,) = conn.execute(
            "SELECT pixels FROM transit_chunks WHERE chunk_id = %s", (chunk_id,)
        ).fetchone()
        cur = conn.execute(
            f"SELECT {', '.join(cols)} FROM transits WHERE healpix = ANY(%s) AND chunk_id = %s",
            (pixels, chunk_id),
        )
        data = list(zip(*cur.fetchall(), strict=True))
        rows = {c: np.array([np.nan if v is None else v for v in data[k]]) for k, c in enumerate(cols)}
        rows["ambiguous"] = rows["ambiguous"].astype(bool)
        with conn.transaction():
            load_transits(conn, rows, chunk_id, revision + 1)
        s["reloaded"] = (chunk_id, revision + 1, len(rows["source_id"]), sorted(pixels))
    s["counts2"] = _counts(dsn)
    s["run3"] = run_alerts(dsn, workers=2)
    return s


def _one(dsn: str, query: str, args=()):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchone()


# --------------------------------------------------------------------------------------- runs


def test_a_run_records_what_it_scanned(scenario):
    dsn, r1 = scenario["dsn"], scenario["run1"]
    assert r1.run_id == 1
    loaded = scenario["loaded1"]
    assert sorted(r1.revisions) == sorted((c, r) for c, r, _ in loaded)
    with psycopg.connect(dsn) as conn:
        run = dict(zip(
            ("n_chunk_revisions", "pixels_scanned", "sources_examined", "transits_read", "n_verdicts",
             "n_candidates", "n_candidates_new", "verdicts_by_detector", "rejected_by_filter", "thresholds",
             "scan", "workers", "software_version", "ok_times"),
            conn.execute(
                "SELECT n_chunk_revisions, pixels_scanned, sources_examined, transits_read, n_verdicts,"
                " n_candidates, n_candidates_new, verdicts_by_detector, rejected_by_filter, thresholds, scan,"
                " workers, software_version, started_at <= finished_at FROM alert_runs WHERE run_id = 1"
            ).fetchone(), strict=True,
        ))  # fmt: skip
        scanned = conn.execute("SELECT chunk_id, revision FROM alert_run_chunks WHERE run_id = 1").fetchall()
        n_cand = conn.execute("SELECT count(*) FROM alert_candidates WHERE run_id = 1").fetchone()[0]
    assert sorted(scanned) == sorted(r1.revisions) and run["n_chunk_revisions"] == len(loaded)
    pixels = {p for _, _, ps in loaded for p in ps}
    n_sources, n_transits = scenario["truth1"]
    assert run["pixels_scanned"] == len(pixels) == r1.pixels
    # the first run: every transit is new, so every source is examined with its whole history
    assert run["sources_examined"] == n_sources and run["transits_read"] == n_transits
    by_det = run["verdicts_by_detector"]
    assert sum(d["raised"] for d in by_det.values()) == run["n_verdicts"] > 0
    assert sum(d["candidates"] for d in by_det.values()) == run["n_candidates"]
    assert sum(d["stored"] for d in by_det.values()) == run["n_candidates_new"] == n_cand
    assert n_cand == run["n_candidates"]  # nothing stored before: every candidate is new
    rejected = run["n_verdicts"] - run["n_candidates"]
    assert sum(run["rejected_by_filter"].values()) >= rejected > 0  # a verdict can fail several filters
    assert run["thresholds"] == json.loads(json.dumps(load_thresholds().as_dict()))
    assert (run["scan"], run["workers"], run["software_version"]) == ("pixel", 2, __version__)
    assert run["ok_times"]


def test_candidates_are_verdicts_on_new_transits_of_their_run(scenario):
    dsn = scenario["dsn"]
    shift = healpix_shift(ORDER)
    with psycopg.connect(dsn) as conn:
        cands = list_candidates(conn)
        assert len(cands) >= 5
        for c in cands:
            assert c.healpix == c.source_id >> shift
            tr = conn.execute(
                "SELECT t.g_mag, t.chunk_id, t.revision FROM transits t WHERE t.healpix = %s"
                " AND t.source_id = %s AND t.t = %s",
                (c.healpix, c.source_id, c.t_trigger),
            ).fetchone()
            assert tr is not None, c  # the triggering transit (run 3 re-loaded its chunk with the same t)
            assert c.alert_mag == pytest.approx(tr[0], abs=1e-6)
            assert conn.execute(  # a transit of the chunks its run scanned
                "SELECT 1 FROM alert_run_chunks WHERE chunk_id = %s AND run_id = %s", (tr[1], c.run_id)
            ).fetchone()
            src = conn.execute(
                "SELECT ra, dec FROM sources WHERE healpix = %s AND source_id = %s", (c.healpix, c.source_id)
            ).fetchone()
            assert (c.ra, c.dec) == pytest.approx(src)
            first = transitions(conn, c.candidate_id)[0]
            assert (first.from_status, first.to_status) == ("", "candidate")
        keys = Counter((c.source_id, c.detector, c.t_trigger) for c in cands)
        assert max(keys.values()) == 1


def test_running_again_with_nothing_new_changes_nothing(scenario):
    again = scenario["run1_again"]
    assert again.run_id is None and "nothing new" in again.message
    assert scenario["counts1_again"] == scenario["counts1"]


def test_later_data_and_new_revisions_are_scanned_once(scenario):
    dsn, r2 = scenario["dsn"], scenario["run2"]
    first = set(scenario["run1"].revisions)
    assert r2.run_id == 2 and set(r2.revisions) == set(scenario["loaded2"]) - first
    with psycopg.connect(dsn) as conn:
        n = conn.execute(
            "SELECT count(*), count(DISTINCT (chunk_id, revision)) FROM alert_run_chunks"
        ).fetchone()
    assert n[0] == n[1]
    assert r2.n_candidates_new <= r2.n_candidates


def test_a_chunk_re_reduced_into_a_new_revision_is_new_data_again(scenario):
    r3 = scenario["run3"]
    chunk_id, revision, _, pixels = scenario["reloaded"]
    assert r3.run_id == 3 and r3.revisions == [(chunk_id, revision)]
    assert r3.pixels == len(pixels)
    dsn = scenario["dsn"]
    n_src = _one(
        dsn, "SELECT count(DISTINCT source_id) FROM transits WHERE healpix = ANY(%s) AND chunk_id = %s",
        (pixels, chunk_id),
    )[0]  # fmt: skip
    assert r3.sources == n_src
    counts2, counts3 = scenario["counts2"], _counts(dsn)
    assert counts3["alert_runs"] == counts2["alert_runs"] + 1
    assert counts3["alert_candidates"] - counts2["alert_candidates"] == r3.n_candidates_new
    with psycopg.connect(dsn) as conn:  # what it stored was triggered by that chunk's transits
        for c in list_candidates(conn, run_id=3):
            assert conn.execute(
                "SELECT chunk_id FROM transits WHERE healpix = %s AND source_id = %s AND t = %s",
                (c.healpix, c.source_id, c.t_trigger),
            ).fetchone() == (chunk_id,)


def test_a_failed_run_leaves_nothing_and_the_next_run_finishes_it(scenario, pg_server):
    dsn = _copy_db(pg_server, "soc_alerts_fresh", "soc_alerts_failing")
    seen = []

    def explode(result):
        seen.append(result.pixel)
        if len(seen) == 2:
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        run_alerts(dsn, workers=2, on_pixel=explode)
    assert set(_counts(dsn).values()) == {0}
    done = run_alerts(dsn, workers=2)  # the lock was released; the same revisions are taken
    assert done.run_id is not None and sorted(done.revisions) == sorted(scenario["run1"].revisions)
    assert done.n_candidates_new == scenario["run1"].n_candidates_new


def test_a_second_run_at_the_same_time_is_refused(scenario):
    dsn = scenario["fresh"]
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute(f"SELECT pg_advisory_lock({RUN_LOCK})")
        with pytest.raises(AlertsRunError, match="another alerts run is in progress"):
            run_alerts(dsn)
    assert set(_counts(dsn).values()) == {0}


# --------------------------------------------------------------------------------------- the scan


def test_per_pixel_and_per_source_scans_give_the_same_verdicts(scenario):
    """The benchmark's two modes, and 1 or 3 workers, on the same data: identical verdicts."""
    dsn = scenario["fresh"]
    with psycopg.connect(dsn) as w, psycopg.connect(dsn) as r:
        pending = pending_revisions(w, r)
        work = new_sources_by_pixel(r, pending)
    # one query per source costs ~2 ms: a sample of 400 sources keeps this test short
    rng = np.random.default_rng(1)
    keep = rng.choice(np.concatenate(list(work.values())), 400, replace=False)
    work = {p: ids[np.isin(ids, keep)] for p, ids in work.items() if np.isin(ids, keep).any()}
    ctx = RunContext(tuple((c, rv) for c, rv, _ in pending), load_thresholds(), ORDER)
    pixel = scan(dsn, ctx, work, workers=3)
    source = scan(dsn, ctx, work, workers=1, per_source=True)
    assert pixel.n_queries == len(work) and source.n_queries == sum(len(v) for v in work.values())
    assert len(pixel.verdicts) > 0 and pixel.pixels == source.pixels
    for name in ("source_id", "detector", "t_trigger", "alert_mag", "n_historic", "rejected_by"):
        assert (getattr(pixel.verdicts, name) == getattr(source.verdicts, name)).all(), name
    for name in ("historic_mag", "historic_std", "significance"):
        np.testing.assert_allclose(getattr(pixel.verdicts, name), getattr(source.verdicts, name))
    np.testing.assert_array_equal(pixel.ra, source.ra)


def test_one_query_reads_the_history_the_flags_and_the_neighbours(scenario):
    """fetch_pixel against plain SQL: every transit of the sources, new exactly for the run's revisions,
    bad_chunk exactly for chunk revisions with a health event at or above the severity."""
    dsn = scenario["fresh"]
    th = load_thresholds()
    with psycopg.connect(dsn) as conn:
        pending = pending_revisions(conn, conn)
        work = new_sources_by_pixel(conn, pending)
        pixel = max(work, key=lambda p: len(work[p]))
        half = {(c, r) for c, r, _ in pending[: len(pending) // 2]}  # pretend the rest was scanned
        ctx = RunContext(tuple(sorted(half)), th, ORDER)
        data = fetch_pixel(conn, ctx, pixel, work[pixel])
        rows = conn.execute(
            "SELECT t.source_id, t.t, t.chunk_id, t.revision, EXISTS (SELECT 1 FROM health_events e"
            "  WHERE (e.chunk_id, e.revision) = (t.chunk_id, t.revision) AND e.severity = ANY(%s))"
            " FROM transits t WHERE t.healpix = %s AND t.source_id = ANY(%s) ORDER BY 1, 2",
            (ctx.severities, pixel, work[pixel].tolist()),
        ).fetchall()
    assert len(data.history) == len(rows)
    np.testing.assert_array_equal(data.history.source_id, [r[0] for r in rows])
    np.testing.assert_array_equal(data.history.new, [(r[2], r[3]) in half for r in rows])
    np.testing.assert_array_equal(data.history.bad_chunk, [r[4] for r in rows])
    np.testing.assert_array_equal(data.sources.source_id, np.unique(work[pixel]))
    assert ctx.severities == ["error", "critical"] or th.min_health_severity != "error"


def test_neighbour_cells_reach_every_source_within_the_radius_across_pixel_edges():
    """Sources on both sides of pixel edges: every pair closer than the radius is within the ranges."""
    rng = np.random.default_rng(3)
    order, radius = 2, 3.0
    nside = 1 << order
    # points on the boundaries of a few pixels, each with companions scattered within 2.5 radii
    vecs = np.concatenate([hp.boundaries(nside, p, step=8, nest=True).T for p in (0, 17, 100, 150)])
    ra0, dec0 = hp.vec2ang(vecs, lonlat=True)
    offs = rng.uniform(-2.5 * radius, 2.5 * radius, (len(ra0), 6, 2)) / 3600.0
    ra = (ra0[:, None] + offs[..., 0] / np.cos(np.radians(dec0))[:, None]).ravel() % 360
    dec = np.clip(dec0[:, None] + offs[..., 1], -89.9, 89.9).ravel()
    cell = hp.ang2pix(1 << 12, ra, dec, nest=True, lonlat=True).astype(np.int64)
    ids = (cell << 35) + np.arange(len(cell))
    vec = hp.ang2vec(ra, dec, lonlat=True)
    crossed = 0
    for k in range(0, len(ids), 7):
        lo, hi, pix, near = neighbour_cells(ids[k : k + 1], radius, order)
        assert set(pix) == set(near) and (hi > lo).all()
        sep = np.degrees(np.arccos(np.clip(vec @ vec[k], -1, 1))) * 3600
        close = np.flatnonzero(sep < radius)
        inside = ((ids[close, None] >= lo) & (ids[close, None] < hi)).any(axis=1)
        assert inside.all(), (k, sep[close][~inside])
        assert ((ids[close] >> healpix_shift(order))[:, None] == near).any(axis=1).all()
        crossed += len(set(ids[close] >> healpix_shift(order))) > 1
    assert crossed > 0  # some neighbourhoods do cross a pixel edge
    # all at once, merged down to a few ranges: still every one, and never a range across partitions
    n_pixels = len(neighbour_cells(ids, radius, order)[3])
    lo, hi, pix, near = neighbour_cells(ids, radius, order, max_ranges=n_pixels + 3)
    assert len(lo) <= n_pixels + 3 and len(near) == n_pixels and (hi > lo).all()
    assert ((lo >> healpix_shift(order)) == pix).all() and (((hi - 1) >> healpix_shift(order)) == pix).all()
    assert ((ids[:, None] >= lo) & (ids[:, None] < hi)).any(axis=1).all()


def test_brighter_neighbours():
    d = 1.0 / 3600.0
    ids = np.array([1, 2, 3])
    ra, dec, g = np.array([10.0, 10.0, 50.0]), np.array([0.0, 0.0, 0.0]), np.array([15.0, 12.0, 16.0])
    cat_id = np.array([1, 2, 10, 11])
    cat_ra = np.array([10.0, 10.0, 10.0 + 2 * d, 50.0 + 4 * d])
    cat_dec = np.zeros(4)
    cat_g = np.array([15.0, 12.0, 13.0, 10.0])
    got = brighter_neighbours(ra, dec, g, cat_id, cat_ra, cat_dec, cat_g, ids, 3.0)
    # 1: source 2 (G 12) at 0" and 10 (G 13) at 2" are brighter; 2: only fainter ones and itself;
    # 3: the brighter one is 4" away
    assert got.tolist() == [True, False, False]
    assert not brighter_neighbours(
        ra, dec, np.full(3, np.nan), cat_id, cat_ra, cat_dec, cat_g, ids, 3.0
    ).any()


def test_the_pool_is_sized_to_the_database_servers_cores(scenario):
    with psycopg.connect(scenario["fresh"]) as conn:
        assert server_cores(conn) is None  # a throwaway server with default settings does not say
        assert default_workers(conn) == (os.cpu_count() or 1)
        conn.execute("SET soc.server_cores = 12")  # as ALTER SYSTEM or postgresql.conf would set it
        assert server_cores(conn) == default_workers(conn) == 12
        conn.execute("RESET soc.server_cores")
        conn.execute("SET max_parallel_workers = 6")  # configured (tuning guides: the core count)
        assert server_cores(conn) == 6


# --------------------------------------------------------------------------------------- life cycle


def test_every_allowed_transition_is_recorded_and_others_are_refused(scenario):
    dsn = scenario["dsn"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = [c.candidate_id for c in list_candidates(conn, status="candidate")][:4]
        a, b, c, d = ids
        assess(conn, a, "ana", "brightening star", "YSO")
        reject(conn, b, "ben", "ghost of a bright star")  # candidate -> rejected
        assess(conn, c, "ana")
        reject(conn, c, "ben", "asteroid")  # assessed -> rejected
        assert [(n, x.status) for n, x in ((a, get_candidate(conn, a)), (b, get_candidate(conn, b)))] == [
            (a, "assessed"), (b, "rejected")
        ]  # fmt: skip
        with pytest.raises(
            TransitionError, match=rf"alert candidate {b}: rejected -> assessed is not allowed"
        ):
            assess(conn, b, "ana")  # rejected is final
        with pytest.raises(ValueError, match="reason"):
            reject(conn, d, "ben", "")  # a reason is required
        with pytest.raises(TransitionError, match=rf"alert candidate {d}: candidate -> published"):
            with conn.transaction():
                publish_candidate(conn, d, "eve")
        assert get_candidate(conn, d).status == "candidate"  # the refusal changed nothing
        published = publish_assessed(conn, "eve")  # only a is assessed now
        assert [cid for cid, _ in published] == [a]
        with pytest.raises(TransitionError, match=rf"alert candidate {a}: published -> rejected"):
            reject(conn, a, "ben", "retract")
        # the database refuses the same on its own, naming the candidate and both states
        with pytest.raises(
            psycopg.errors.CheckViolation, match=rf"alert candidate {b}: rejected -> candidate"
        ):
            conn.execute("UPDATE alert_candidates SET status = 'candidate' WHERE candidate_id = %s", (b,))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                "INSERT INTO alert_transitions (candidate_id, from_status, to_status, who)"
                " VALUES (%s, 'published', 'candidate', 'x')",
                (a,),
            )
        steps = [(t.from_status, t.to_status, t.who) for t in transitions(conn, c)]
        assert steps == [("", "candidate", "soc alerts run"), ("candidate", "assessed", "ana"),
                         ("assessed", "rejected", "ben")]  # fmt: skip
        assert transitions(conn, b)[-1].comment == "ghost of a bright star"
        cand_a = get_candidate(conn, a)
        assert (cand_a.alert_class, cand_a.comment, cand_a.status) == ("YSO", "brightening star", "published")
        assert cand_a.name is not None and names.parse_name(cand_a.name)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="alert names are permanent"):
            conn.execute("DELETE FROM alert_names")
    assert {s for pair in FLOW for s in pair} == set(STATUSES)


# --------------------------------------------------------------------------------------- names


def test_gaia_letters_run_aaa_to_zzz_then_four_letters():
    seq = [names.letters(i) for i in range(30)]
    assert seq[:3] == ["aaa", "aab", "aac"] and seq[25:28] == ["aaz", "aba", "abb"]
    assert names.letters(26**3 - 1) == "zzz" and names.letters(26**3) == "aaaa"
    assert names.letters(26**3 + 26**4) == "aaaaa"
    for i in (0, 1, 25, 26, 675, 676, 17575, 17576, 475253, 475254):
        assert names.seq_of(names.letters(i)) == i
    assert names.alert_name(2016, 628) == "Gaia16aye" and names.parse_name("Gaia16aye") == (16, 628)
    for bad in ("Gaia16ay", "Gaia6aye", "gaia16aye", "Gaia16aYe", "Gaia16aye "):
        with pytest.raises(names.AlertNameError):
            names.parse_name(bad)


@pytest.mark.skipif(not REAL_ALERTS.exists(), reason="the gaia-alerts data is not beside the checkout")
def test_the_name_scheme_is_that_of_the_real_index():
    rows = [r for r in csv.reader(REAL_ALERTS.open(newline=""), skipinitialspace=True) if r][1:]
    assert len(rows) == 24770
    by_year: dict[int, list[int]] = {}
    for row in rows:
        year, seq = names.parse_name(row[0])
        assert row[8][2:4] == f"{year:02d}"  # the name's year is the year of publication
        by_year.setdefault(year, []).append(seq)
    for year, seqs in by_year.items():
        if year >= 15:  # 2014 has two gaps; from 2015 on every year is aaa.. without a gap
            assert sorted(seqs) == list(range(len(seqs))), year
    keys = [names.sort_key(r[0]) for r in rows]
    assert keys == sorted(keys, reverse=True)  # the file is newest first in this order


# --------------------------------------------------------------------------------------- CLI


def test_the_soc_alerts_commands(scenario, pg_server, capsys):
    dsn = _copy_db(pg_server, "soc_alerts_fresh", "soc_alerts_cli")
    assert main(["alerts", "run", "--dsn", dsn, "--no-progress", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "alerts run 1" in out and "brightening" in out
    assert main(["alerts", "run", "--dsn", dsn, "--no-progress"]) == 0
    assert "nothing new to scan" in capsys.readouterr().out
    assert main(["alerts", "list", "--dsn", dsn, "--format", "csv", "--status", "candidate"]) == 0
    listed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert listed and {r["status"] for r in listed} == {"candidate"}
    first = listed[0]["id"]
    assert main(["alerts", "assess", first, "--dsn", dsn, "--by", "ana", "--class", "CV"]) == 0
    assert main(["alerts", "reject", first, "--dsn", dsn, "--by", "ana", "--reason", "no"]) == 0
    assert main(["alerts", "assess", first, "--dsn", dsn, "--by", "ana"]) == 2
    assert f"alert candidate {first}: rejected -> assessed is not allowed" in capsys.readouterr().err
    assert main(["alerts", "list", "--dsn", dsn, "--status", "rejected"]) == 0
    assert "rejected" in capsys.readouterr().out


@pytest.mark.skipif(not REAL_ALERTS.exists(), reason="the gaia-alerts data is not beside the checkout")
def test_soc_alerts_realdata_writes_the_replay_report(tmp_path, capsys):
    assert main(["alerts", "realdata", "--out", str(tmp_path), "--data", str(REAL_ALERTS.parent)]) == 0
    out = capsys.readouterr().out
    assert "light curves scored of 97" in out
    assert {p.name for p in tmp_path.iterdir()} >= {
        "alerts_replay.csv",
        "alerts_replay.png",
        "alerts_replay.html",
    }
