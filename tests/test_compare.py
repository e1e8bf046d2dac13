"""`soc compare`: operations against a copy of itself, then against copies with known differences (real
PostgreSQL databases from the conftest fixtures, a small simulated day loaded through the pipeline)."""

import argparse
import itertools
import json
import shutil

import psycopg
import pytest

from pipeline.alerts.candidates import assess, publish_assessed
from pipeline.alerts.run import run_alerts
from pipeline.chunks import reduce_due
from pipeline.compare import CompareError, add_parser, compare, run
from pipeline.compare.engine import SEGMENT_ROWS, Side, digest_table
from pipeline.compare.rules import EXCLUDED_TABLES, TIME_TYPES, compared_tables, read_catalog, table_spec
from pipeline.db import migrate
from pipeline.db.checksums import (
    Digest,
    digest_query,
    leaf_partitions,
    partition_units,
    table_checksum,
    table_digest,
)
from pipeline.intake import ingest_file, pending_files
from pipeline.reduction import ChunkReducer, WorkingCatalogue

ORDER = 2  # the template's healpix_order: 192 leaves per table
_copies = itertools.count()
RUN_COLUMNS = (
    "started_at, finished_at, n_chunk_revisions, pixels_scanned, sources_examined, transits_read, n_verdicts,"
    " n_candidates, n_candidates_new, verdicts_by_detector, rejected_by_filter, thresholds, scan"
)


@pytest.fixture(scope="module")
def ops(pg_server, pg_template, faulty_day, tmp_path_factory):
    """Operations: a migrated database with the simulated day ingested, reduced (products in an outbox)
    and scanned for alerts. -> (dsn, outbox)"""
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE soc_compare_ops TEMPLATE {pg_template}")
    dsn = pg_server.dsn("soc_compare_ops")
    settings = {
        "chunk_seconds": 1800,
        "healpix_order": ORDER,
        "catalogue_seed": 11,
        "catalogue_scale": 0.0003,
    }
    migrate.init(dsn, settings)  # the template's, and the faulty day's sky
    outbox = tmp_path_factory.mktemp("compare-outbox")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for f in pending_files(faulty_day / "passes"):
            ingest_file(conn, f)
        assert reduce_due(conn, ChunkReducer(WorkingCatalogue.from_settings(conn), outbox=outbox), flush=True)
    run_alerts(dsn, workers=1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        _a_published_alert(conn)
    return dsn, outbox


def _a_published_alert(conn) -> None:
    """Candidates as an alerts run stores them (the simulated day is too short to raise any), one of them
    assessed and published: rows in every alert table, with identities and references between them."""
    with conn.transaction():
        (run_id,) = conn.execute(
            f"INSERT INTO alert_runs ({RUN_COLUMNS}, workers, software_version) VALUES"
            " (now(), now(), 1, 1, 2, 2, 2, 2, 2, '{}', '{}', '{}', 'pixel', 1, 'test') RETURNING run_id"
        ).fetchone()
        ids = [
            cid
            for (cid,) in conn.execute(
                "INSERT INTO alert_candidates (source_id, detector, t_trigger, run_id, healpix, ra, dec,"
                " alert_mag, n_historic, significance)"
                " SELECT source_id, 'brightening', t, %s, healpix, ra, dec, g_mag, 5, 6.5"
                " FROM transits WHERE g_mag IS NOT NULL ORDER BY source_id, obt LIMIT 2"
                " RETURNING candidate_id",
                (run_id,),
            )
        ]
        for cid in ids:
            conn.execute(
                "INSERT INTO alert_transitions (candidate_id, from_status, to_status, who, comment)"
                " VALUES (%s, '', 'candidate', 'soc alerts run', %s)",
                (cid, f"raised by alerts run {run_id}"),
            )
    assess(conn, ids[0], "tester", "looks real", "SN")
    publish_assessed(conn, "tester")


@pytest.fixture
def clone(pg_server, ops):
    """A factory of copies of operations (CREATE DATABASE ... TEMPLATE): validation as it should be."""

    def make() -> str:
        name = f"soc_compare_val_{next(_copies)}"
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE soc_compare_ops")
        return pg_server.dsn(name)

    return make


def _sql(dsn: str, *statements: str) -> list:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [conn.execute(s).fetchall() if s.lstrip().upper().startswith("SELECT") else conn.execute(s)
                for s in statements]  # fmt: skip


def _leaf(table: str, healpix: int) -> str:
    return f"{table}_p{healpix:03d}"


def test_a_copy_is_identical_whatever_differs_by_design(ops, clone):
    dsn, _ = ops
    val = clone()
    # what differs between environments by design: logbooks, run records, identities, times of loading
    _sql(
        val,
        "INSERT INTO elog (kind, subject) VALUES ('clone', 'validation')",
        "INSERT INTO ingest_log (file_name, started_at, finished_at, outcome)"
        " VALUES ('x', now(), now(), 'x')",
        "UPDATE schema_migrations SET applied_at = applied_at + interval '1 day'",
        "UPDATE alert_transitions SET at = at + interval '1 hour'",
        # the same run, recorded under another identity (validation ran other runs before it)
        f"INSERT INTO alert_runs ({RUN_COLUMNS}, workers, software_version)"
        f" SELECT {RUN_COLUMNS}, 2, 'next' FROM alert_runs",
        "UPDATE alert_run_chunks SET run_id = (SELECT max(run_id) FROM alert_runs)",
        "UPDATE alert_candidates SET run_id = (SELECT max(run_id) FROM alert_runs)",
        "UPDATE alert_transitions SET comment = 'raised by alerts run 2' WHERE from_status = ''",
    )
    result = compare(dsn, val)
    assert result.identical and result.exit_status == 0 and result.differences == 0
    assert result.consistent_snapshot
    names = {t.table for t in result.tables}
    assert {"transits", "sources", "transit_chunks", "chunks", "health_events", "health_summary",
            "alert_candidates", "alert_transitions", "packet_ledger", "raw_packets"} <= names  # fmt: skip
    assert set(result.excluded_tables) == {"elog", "ingest_log", "alert_runs"}
    for t in result.tables:
        assert t.checksum_equal and not t.segments and not t.rows, t.table
        assert t.ops_rows == t.val_rows
    transits = result.table("transits")
    assert transits.partitioned and transits.n_segments == 12 * 4**ORDER
    assert transits.ops_rows > 3000 and result.table("alert_candidates").ops_rows >= 2
    assert result.table("alert_names").ops_rows == 1 and result.table("alert_transitions").ops_rows >= 4
    assert "candidate_id.t_trigger" in result.table("alert_names").columns
    assert result.table("alert_candidates").key == ["source_id", "detector", "t_trigger"]
    assert "applied_at" in result.table("schema_migrations").excluded


def test_every_difference_is_reported_with_table_key_column_and_values(ops, clone, tmp_path):
    dsn, _ = ops
    val = clone()
    (changed, gone) = _sql(
        dsn,
        "SELECT healpix, source_id, obt, g_mag::text FROM transits WHERE g_mag IS NOT NULL"
        " ORDER BY healpix, source_id, obt LIMIT 1",
        "SELECT healpix, source_id, obt FROM transits ORDER BY healpix DESC, source_id, obt LIMIT 1",
    )
    (hp, sid, obt, g_mag) = changed[0]
    (hp_gone, sid_gone, obt_gone) = gone[0]
    assert hp != hp_gone
    (event, ledger, new_source) = _sql(
        dsn,
        "SELECT chunk_id, revision, kind, ccd_row, ccd_column, t_start_obt, value::text, detail"
        " FROM health_events ORDER BY 1, 2, 3, 4, 5, 6 LIMIT 1",
        "SELECT file_name, byte_offset FROM packet_ledger ORDER BY 1, 2 LIMIT 1",
        f"SELECT max(source_id) + 1, (max(source_id) + 1) >> {35 + 2 * (12 - ORDER)} FROM sources",
    )
    with psycopg.connect(val, autocommit=True) as conn:
        conn.execute(
            "UPDATE transits SET g_mag = g_mag + 0.5 WHERE healpix = %s AND source_id = %s AND obt = %s",
            (hp, sid, obt),
        )
        conn.execute(
            "DELETE FROM transits WHERE healpix = %s AND source_id = %s AND obt = %s",
            (hp_gone, sid_gone, obt_gone),
        )
        conn.execute(
            "INSERT INTO sources (source_id, healpix, ra, dec, g_ref, origin)"
            " VALUES (%s, %s, 1.5, -2.25, NULL, 'new')",
            new_source[0],
        )
        conn.execute(
            "UPDATE health_events SET detail = 'changed in validation'"
            " WHERE (chunk_id, revision, kind, ccd_row, ccd_column, t_start_obt) = (%s, %s, %s, %s, %s, %s)",
            event[0][:6],
        )
        conn.execute(
            "UPDATE packet_ledger SET length = length WHERE file_name = %s AND byte_offset = %s", ledger[0]
        )  # rewritten, same content: no difference
    html, js = tmp_path / "report.html", tmp_path / "report.json"
    result = compare(dsn, val)
    assert result.exit_status == 1 and not result.identical
    assert {t.table for t in result.tables if t.differences} == {"transits", "sources", "health_events"}
    # classified by area, in the order of the pipeline
    assert {a: [t.table for t in ts] for a, ts in result.by_area().items()} == {
        "science": ["sources", "transits"],
        "health": ["health_events"],
    }

    transits = result.table("transits")
    assert (transits.only_ops, transits.only_val, transits.changed) == (1, 0, 1)
    assert transits.changed_by_column == {"g_mag": 1}
    # only the two leaves holding the changed rows were compared row by row
    assert sorted(transits.segments_diffed) == sorted([_leaf("transits", hp), _leaf("transits", hp_gone)])
    assert [s.name for s in transits.segments] == transits.segments_diffed
    by_kind = {r.kind: r for r in transits.rows}
    mod = by_kind["changed"]
    assert mod.key == {"healpix": str(hp), "source_id": str(sid), "obt": repr(obt)}
    assert mod.segment == _leaf("transits", hp)
    ((col, was, now),) = [(v.column, v.ops, v.val) for v in mod.values]
    assert col == "g_mag" and was == g_mag and float(now) == pytest.approx(float(g_mag) + 0.5, abs=1e-5)
    missing = by_kind["only_ops"]
    assert missing.key == {"healpix": str(hp_gone), "source_id": str(sid_gone), "obt": repr(obt_gone)}
    assert all(v.val is None for v in missing.values) and {v.column for v in missing.values} >= {
        "g_mag",
        "ra",
    }

    sources = result.table("sources")
    assert (sources.only_ops, sources.only_val, sources.changed) == (0, 1, 0)
    (added,) = sources.rows
    assert added.key == {"healpix": str(new_source[0][1]), "source_id": str(new_source[0][0])}
    assert {v.column: v.val for v in added.values} == {
        "ra": "1.5",
        "dec": "-2.25",
        "g_ref": None,
        "origin": "new",
    }
    assert sources.segments_diffed == [_leaf("sources", new_source[0][1])]

    events = result.table("health_events")
    ((ev,),) = [[r for r in events.rows]]
    assert ev.kind == "changed" and list(ev.key.values())[:3] == [
        str(event[0][0]),
        str(event[0][1]),
        event[0][2],
    ]
    assert [(v.column, v.ops, v.val) for v in ev.values] == [("detail", event[0][7], "changed in validation")]

    # the report: one self-contained file with every difference in it
    from pipeline.compare.report import write_html, write_json

    text = write_html(result, html).read_text()
    assert not any(tag in text for tag in ("<script", "<link", "src=")), "one self-contained file"
    needles = ("transits", _leaf("transits", hp), str(sid), "g_mag", g_mag, now, str(sid_gone), "sources",
               str(new_source[0][0]), "health_events", "changed in validation", event[0][7])  # fmt: skip
    for needle in needles:
        assert needle in text, needle
    doc = json.loads(write_json(result, js).read_text())
    assert doc["identical"] is False and doc["differences"] == 4
    tj = next(t for t in doc["tables"] if t["table"] == "transits")
    assert tj["segments_diffed"] == transits.segments_diffed and tj["checksum_equal"] is False


def test_a_big_table_is_drilled_into_hash_buckets(ops, clone):
    dsn, _ = ops
    val = clone()
    first = "SELECT file_name, byte_offset FROM packet_ledger WHERE status = %s ORDER BY 1, 2 LIMIT 1"
    with psycopg.connect(val, autocommit=True) as conn:
        edited = conn.execute(first, ("quarantined",)).fetchone()
        gone = conn.execute(first, ("duplicate",)).fetchone()
        conn.execute(
            "UPDATE packet_ledger SET reason = 'edited' WHERE (file_name, byte_offset) = (%s, %s)", edited
        )
        conn.execute("DELETE FROM packet_ledger WHERE (file_name, byte_offset) = (%s, %s)", gone)
        conn.execute(
            "INSERT INTO packet_ledger (file_name, byte_offset, length, status)"
            " VALUES (%s, 999999999, 10, 'duplicate')",
            (gone[0],),
        )
    result = compare(dsn, val, tables=["packet_ledger", "deliveries"])
    assert [t.table for t in result.tables] == ["deliveries", "packet_ledger"]
    ledger = result.table("packet_ledger")
    assert ledger.ops_rows > SEGMENT_ROWS
    (seg,) = ledger.segments
    assert seg.buckets >= 2 and 1 <= seg.buckets_differing <= 3
    assert (ledger.only_ops, ledger.only_val, ledger.changed) == (1, 1, 1)
    rows = {r.kind: r for r in ledger.rows}
    assert rows["changed"].key == {"file_name": edited[0], "byte_offset": str(edited[1])}
    assert [(v.column, v.val) for v in rows["changed"].values] == [("reason", "edited")]
    assert rows["only_ops"].key == {"file_name": gone[0], "byte_offset": str(gone[1])}
    assert rows["only_val"].key == {"file_name": gone[0], "byte_offset": "999999999"}
    assert result.table("deliveries").checksum_equal


def test_rows_listed_are_capped_counts_are_exact(ops, clone):
    dsn, _ = ops
    val = clone()
    _sql(val, "UPDATE transits SET flags = flags + 1 WHERE healpix IN (SELECT healpix FROM transits"
              " GROUP BY healpix ORDER BY count(*) DESC LIMIT 3)")  # fmt: skip
    (n,) = _sql(dsn, "SELECT sum(n) FROM (SELECT count(*) n FROM transits GROUP BY healpix"
                     " ORDER BY count(*) DESC LIMIT 3) x")[0][0]  # fmt: skip
    result = compare(dsn, val, tables=["transits"], max_rows=7)
    t = result.table("transits")
    assert t.changed == n > 7 and len(t.rows) == 7 and t.changed_by_column == {"flags": n}
    assert len(t.segments_diffed) == 3


def test_floats_exact_by_default_or_within_a_tolerance(ops, clone):
    dsn, _ = ops
    val = clone()
    _sql(val, "UPDATE transits SET ra = ra * (1 + 1e-12) WHERE (healpix, source_id, obt) ="
              " (SELECT healpix, source_id, obt FROM transits ORDER BY 1, 2, 3 LIMIT 1)")  # fmt: skip
    exact = compare(dsn, val, tables=["transits"])
    assert exact.table("transits").changed == 1 and exact.exit_status == 1
    loose = compare(dsn, val, tables=["transits"], float_tolerance=1e-9)
    t = loose.table("transits")
    assert loose.identical and t.checksum_equal is False and t.within_tolerance == 1


def test_manifests_of_the_two_outboxes(ops, clone, tmp_path):
    dsn, outbox = ops
    val_outbox = tmp_path / "val-outbox"
    shutil.copytree(outbox, val_outbox)
    manifests = sorted(val_outbox.glob("*.manifest.json"))
    assert len(manifests) >= 2
    edited = json.loads(manifests[0].read_text())
    edited["row_count"] += 1
    manifests[0].write_text(json.dumps(edited))
    other = json.loads(manifests[1].read_text())
    other["software_version"] = "9.9.9"  # by design: validation runs the release candidate
    manifests[1].write_text(json.dumps(other))
    manifests[-1].unlink()
    result = compare(dsn, clone(), tables=["soc_settings"], manifests=(outbox, val_outbox))
    m = result.manifests
    assert result.exit_status == 1 and result.table("manifests") is m and m.differences == 2
    assert (m.only_ops, m.only_val, m.changed) == (1, 0, 1)
    change = next(r for r in m.rows if r.kind == "changed")
    assert change.key == {"chunk_id": str(edited["chunk_id"]), "revision": str(edited["revision"])}
    assert [(v.column, int(v.val) - int(v.ops)) for v in change.values] == [("row_count", 1)]


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="soc")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    assert args.func is run
    return args.func(args)


def test_the_command_exit_status_and_report(ops, clone, tmp_path, capsys):
    dsn, _ = ops
    val = clone()
    html = tmp_path / "same.html"
    assert _cli(["compare", dsn, val, "--html", str(html), "--tables", "sources,transit_chunks"]) == 0
    assert "IDENTICAL" in html.read_text() and "identical" in capsys.readouterr().out
    _sql(val, "DELETE FROM transit_chunks WHERE chunk_id = (SELECT min(chunk_id) FROM transit_chunks)")
    js = tmp_path / "r.json"
    code = _cli(
        ["compare", dsn, val, "--html", str(tmp_path / "diff.html"), "--json", str(js), "--no-progress"]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "chunking: transit_chunks: 1 missing in val" in out and "DIFFERENT" in out
    assert json.loads(js.read_text())["by_area"] == {"chunking": ["transit_chunks"]}
    assert json.loads(js.read_text())["differences"] == 1
    page = (tmp_path / "diff.html").read_text()
    assert "Differences by area" in page and "chunks were reduced at other times" in page


def test_errors_are_clear_and_exit_2(ops, pg_server, tmp_path, capsys):
    dsn, _ = ops
    html = tmp_path / "r.html"
    bad = pg_server.dsn("no_such_database") + " password=hunter2"
    assert _cli(["compare", dsn, bad, "--html", str(html)]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to the val database" in err and "no_such_database" in err and "hunter2" not in err
    assert not html.exists()
    assert _cli(["compare", "host=/nonexistent/dir port=1", dsn, "--html", str(html)]) == 2
    assert "cannot connect to the ops database" in capsys.readouterr().err
    assert _cli(["compare", dsn, dsn, "--html", str(html)]) == 2
    assert "same database" in capsys.readouterr().err
    assert _cli(["compare", dsn, pg_server.dsn("soc_template"), "--tables", "nope", "--html", str(html)]) == 2
    assert "no table nope" in capsys.readouterr().err
    with pytest.raises(CompareError, match="elog is not compared"):
        compare(dsn, pg_server.dsn("soc_template"), tables=["elog"])


def test_every_table_of_the_schema_is_compared_by_a_natural_key_or_excluded(pg_server, pg_template):
    """A new migration's table or load-time column must get a rule (pipeline/compare/rules.py)."""
    with psycopg.connect(pg_server.dsn(pg_template)) as conn:
        cat = read_catalog(conn)
    assert set(cat.kinds) == set(compared_tables(cat)) | (set(EXCLUDED_TABLES) & set(cat.kinds))
    for table in compared_tables(cat):
        spec = table_spec(cat, table)  # raises without a natural key
        times = [c.name for c in spec.all_columns if c.type in TIME_TYPES]
        assert not times, f"{table}: time columns compared ({times}): exclude them or say why they are data"
        identities = cat.identity(table)
        assert not identities & {c.name for c in spec.all_columns}, table


def test_digests_add_up_over_the_leaves(ops):
    """The per-leaf digests (grouped by leaf over each group partition) sum to the whole table's."""
    dsn, _ = ops
    side = Side("ops", dsn)
    try:
        with side.reading() as conn:
            spec = table_spec(read_catalog(conn), "transits")
            spec.units = tuple((u, tuple(leaves)) for u, leaves in partition_units(conn, "transits"))
            (n, total) = conn.execute(digest_query(spec.select())).fetchone()
            assert leaf_partitions(conn, "transits") == list(spec.leaves)
        per_leaf = digest_table(side, spec)
    finally:
        side.close()
    assert len(per_leaf) == 12 * 4**ORDER and len(spec.units) == 12 * 4 ** (ORDER // 2)
    assert sum(per_leaf.values(), Digest()) == Digest.of(n, total) and n > 0
    assert sum(1 for d in per_leaf.values() if d.rows) < len(per_leaf)  # empty leaves are in it too
    with psycopg.connect(dsn) as conn:  # the whole-row checksum of the existing tests, leaf by leaf
        whole = table_digest(conn, "transits")
        assert whole == sum((table_digest(conn, leaf) for leaf in spec.leaves), Digest())
        assert table_checksum(conn, "transits") == (whole.rows, whole.hex)


def test_schema_differences_are_differences(ops, clone):
    dsn, _ = ops
    val = clone()
    _sql(
        val,
        "ALTER TABLE deliveries ADD COLUMN note text",
        "ALTER TABLE soc_settings ALTER COLUMN value TYPE varchar(100)",
        "CREATE TABLE extra (k integer PRIMARY KEY)",
        "INSERT INTO extra VALUES (1), (2)",
    )
    result = compare(dsn, val, tables=["deliveries", "soc_settings", "extra", "chunks"])
    assert result.exit_status == 1
    assert result.table("deliveries").schema == ["column note only in val"]
    assert result.table("deliveries").checksum_equal  # the common columns are equal
    assert result.table("soc_settings").schema == [
        "column value is text in ops, character varying(100) in val: not compared"
    ]
    extra = result.table("extra")
    assert extra.schema == ["table only in val"] and extra.val_rows == 2 and extra.ops_rows is None
    assert result.table("chunks").differences == 0
