"""Main Database science tables and their bulk loader, against a real PostgreSQL (template order 2)."""

import dataclasses

import numpy as np
import psycopg
import pytest

from pipeline import cli
from pipeline.db import migrate
from pipeline.db.checksums import table_checksum
from pipeline.db.load import (
    TRANSIT_COLUMNS,
    delete_chunk,
    empty_transits,
    healpix_of,
    load_transits,
    load_transits_parallel,
    read_transits,
    upsert_sources,
)

from .conftest import migrated_database

ORDER = 2  # the template's healpix_order (tests/conftest.py)
N_PIX = 12 * 4**ORDER


def make_sources(n: int, seed: int, pixels=None) -> np.ndarray:
    """Gaia-style source ids: a level-12 nested pixel in bits 35 and up, a running number below."""
    rng = np.random.default_rng(seed)
    per = 4 ** (12 - ORDER)  # level-12 pixels per pixel at ORDER
    pix = rng.choice(pixels, n) if pixels is not None else rng.integers(0, N_PIX, n)
    pix12 = pix.astype(np.int64) * per + rng.integers(0, per, n)
    return np.unique((pix12 << 35) | rng.integers(0, 1 << 34, n))


def make_transits(source_ids: np.ndarray, per_source: int, seed: int, t0: float = 1e6) -> dict:
    rng = np.random.default_rng(seed)
    sid = np.repeat(source_ids, per_source)
    n = len(sid)
    obt = t0 + np.sort(rng.uniform(0, 1800, n))
    g_mag = rng.uniform(6, 20, n).astype(np.float32)
    g_mag[::7] = np.nan  # nullable: becomes NULL
    return {
        "source_id": sid, "obt": obt, "t": obt - 0.5,
        "apid": np.full(n, 1201, np.int16), "seq": rng.integers(0, 16384, n).astype(np.int32),
        "fov": rng.integers(0, 2, n).astype(np.int16), "ccd_row": rng.integers(0, 7, n).astype(np.int16),
        "ac_pixel": rng.integers(0, 1966, n).astype(np.int16),
        "ra": rng.uniform(0, 360, n), "dec": rng.uniform(-90, 90, n),
        "pos_err_mas": rng.uniform(0.1, 5, n).astype(np.float32),
        "g_flux": rng.uniform(10, 1e6, n).astype(np.float32), "g_flux_err": np.ones(n, np.float32),
        "g_mag": g_mag, "g_mag_err": np.full(n, 0.01, np.float32),
        "n_good": np.full(n, 9, np.int16), "flags": rng.integers(0, 4, n).astype(np.int32),
        "match_dist_mas": rng.uniform(0, 900, n).astype(np.float32),
        "ambiguous": rng.random(n) < 0.05,
    }  # fmt: skip


def take(rows: dict, idx) -> dict:
    return {k: v[idx] for k, v in rows.items()}


@pytest.fixture
def db(new_db):
    return new_db()


@pytest.fixture
def empty_db(pg_server):
    """A database with no schema at all (not copied from the template)."""
    name = f"soc_empty_{np.random.default_rng().integers(1 << 40)}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.dsn(name)


def _load(dsn: str, rows: dict, chunk_id: int, revision: int, **kw) -> int:
    with psycopg.connect(dsn) as conn:
        return load_transits(conn, rows, chunk_id, revision, **kw)


def _checksums(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        return {t: table_checksum(conn, t) for t in ("transits", "transit_chunks", "sources")}


# ---------------------------------------------------------------------------------------------- schema


def test_one_leaf_partition_per_pixel(db):
    with psycopg.connect(db) as conn:
        for table in ("transits", "sources"):
            leaves = conn.execute(
                "SELECT relid::regclass::text, pg_get_expr(c.relpartbound, c.oid)"
                " FROM pg_partition_tree(%s) t JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf",
                (table,),
            ).fetchall()
            assert len(leaves) == N_PIX == 192
            want = {(f"{table}_p{p:03d}", f"FOR VALUES IN ({p})") for p in range(N_PIX)}
            assert set(leaves) == want


def test_rows_land_in_the_partition_of_their_pixel(db):
    src = make_sources(300, seed=1)
    rows = make_transits(src, 3, seed=2)
    with psycopg.connect(db) as conn:
        assert load_transits(conn, rows, chunk_id=7, revision=1) == len(src) * 3
        n = len(src)
        cat = {"source_id": src, "ra": np.zeros(n), "dec": np.zeros(n), "g_ref": np.full(n, 12.0),
               "origin": np.full(n, "catalogue")}  # fmt: skip
        upsert_sources(conn, cat)
        for table in ("transits", "sources"):
            got = conn.execute(f"SELECT tableoid::regclass::text, healpix, source_id FROM {table}").fetchall()
            assert len(got) == len(rows["source_id"] if table == "transits" else src)
            for part, hp, sid in got:
                assert hp == sid >> (35 + 2 * (12 - ORDER)) == int(healpix_of(sid, ORDER))
                assert part == f"{table}_p{hp:03d}"
        assert len({r[0] for r in conn.execute("SELECT DISTINCT healpix FROM transits")}) > 100


def test_a_row_whose_healpix_does_not_match_its_source_is_rejected(db):
    rows = make_transits(make_sources(20, seed=3), 2, seed=4)
    rows["healpix"] = healpix_of(rows["source_id"], ORDER)
    rows["healpix"][5] = (rows["healpix"][5] + 1) % N_PIX
    with psycopg.connect(db) as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match="transits_healpix_of_source"):
            load_transits(conn, rows, chunk_id=1, revision=1)
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation, match="sources_healpix_of_source"):
            conn.execute(
                "INSERT INTO sources VALUES (%s, %s, 0, 0, NULL, 'new')",
                (int(rows["source_id"][0]), int(rows["healpix"][5])),
            )
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM transits").fetchone()[0] == 0


# ---------------------------------------------------------------------------------------------- loader


def test_loading_the_same_revision_again_changes_nothing_and_input_order_does_not_matter(db, new_db):
    rows = make_transits(make_sources(400, seed=5), 4, seed=6)
    _load(db, rows, 11, 1)
    first = _checksums(db)
    _load(db, rows, 11, 1)
    assert _checksums(db) == first
    other = new_db()
    shuffled = take(rows, np.random.default_rng(0).permutation(len(rows["obt"])))
    _load(other, shuffled, 11, 1, method="write_row", sort=False)
    assert _checksums(other) == first
    assert first["transits"][0] == 1600


def test_a_new_revision_replaces_the_chunk_and_leaves_other_chunks_alone(db):
    a1 = make_transits(make_sources(300, seed=7), 2, seed=8, t0=1e6)
    b = make_transits(make_sources(300, seed=9), 2, seed=10, t0=2e6)
    a2 = make_transits(make_sources(100, seed=11), 3, seed=12, t0=1e6)  # other sources, other pixels
    _load(db, a1, 1, 1)
    _load(db, b, 2, 1)
    with psycopg.connect(db) as conn:
        b_before = conn.execute("SELECT t::text FROM transits t WHERE chunk_id = 2 ORDER BY 1").fetchall()
    _load(db, a2, 1, 2)
    with psycopg.connect(db) as conn:
        got = conn.execute("SELECT source_id, obt, revision FROM transits WHERE chunk_id = 1").fetchall()
        assert sorted(got) == sorted(
            zip(a2["source_id"].tolist(), a2["obt"].tolist(), [2] * 300, strict=True)
        )
        b_after = conn.execute("SELECT t::text FROM transits t WHERE chunk_id = 2 ORDER BY 1").fetchall()
        assert b_after == b_before and len(b_after) == 600
        chunks = conn.execute(
            "SELECT chunk_id, revision, n_transits FROM transit_chunks ORDER BY 1"
        ).fetchall()
        assert chunks == [(1, 2, 300), (2, 1, 600)]


def test_the_load_is_part_of_the_callers_transaction(db):
    rows = make_transits(make_sources(50, seed=13), 2, seed=14)
    with psycopg.connect(db) as conn:
        load_transits(conn, rows, 3, 1)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM transits").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM transit_chunks").fetchone()[0] == 0


def test_values_round_trip_and_nan_in_a_nullable_column_is_null(db):
    rows = make_transits(make_sources(30, seed=15), 1, seed=16)
    _load(db, rows, 4, 1)
    names = [c.name for c in TRANSIT_COLUMNS if c.name not in ("healpix", "chunk_id", "revision")]
    with psycopg.connect(db) as conn:
        got = conn.execute(f"SELECT {', '.join(names)} FROM transits ORDER BY source_id, obt").fetchall()
    order = np.lexsort((rows["obt"], rows["source_id"]))
    for j, name in enumerate(names):
        want = rows[name][order]
        col = [r[j] for r in got]
        if want.dtype.kind == "f":
            nan = np.isnan(want)
            assert [c is None for c in col] == nan.tolist(), name
            assert np.array_equal(np.array([c for c in col if c is not None], want.dtype), want[~nan]), name
        else:
            assert col == want.tolist(), name


def test_parallel_streams_give_the_same_table(db, new_db):
    rows = make_transits(make_sources(300, seed=17), 2, seed=18)
    _load(db, rows, 5, 1)
    other = new_db()
    assert load_transits_parallel(other, rows, 5, 1, streams=2) == 600
    assert _checksums(other) == _checksums(db)


def test_upsert_sources_inserts_new_ones_and_leaves_existing_ones_unchanged(db):
    src = make_sources(200, seed=19)
    n = len(src)
    g_ref = np.full(n, 15.0, np.float32)
    g_ref[n // 2 :] = np.nan  # the new ones
    origin = np.where(np.isnan(g_ref), "new", "catalogue")
    with psycopg.connect(db) as conn:
        first = {"source_id": src[:150], "ra": np.ones(150), "dec": np.ones(150), "g_ref": g_ref[:150],
                 "origin": origin[:150]}  # fmt: skip
        assert upsert_sources(conn, first) == 150
        again = {"source_id": src, "ra": np.full(n, 2.0), "dec": np.full(n, 2.0), "g_ref": g_ref,
                 "origin": origin}  # fmt: skip
        assert upsert_sources(conn, again) == n - 150
        conn.commit()
        got = dict(conn.execute("SELECT source_id, (ra, g_ref, origin)::text FROM sources").fetchall())
    assert len(got) == n
    assert got[int(src[0])] == "(1,15,catalogue)"
    assert got[int(src[149])] == "(1,,new)"  # inserted first, unchanged by the second upsert
    assert got[int(src[-1])] == "(2,,new)"


# ---------------------------------------------------------------------------------------------- init/migrate


def _tables(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        ).fetchone()[0]


def test_init_twice_is_a_no_op_and_other_settings_are_refused(empty_db, capsys):
    args = ["db", "init", "--dsn", empty_db, "--healpix-order", "1"]
    assert cli.main(args) == 0
    assert "0002_main_database" in capsys.readouterr().out
    before = _tables(empty_db)
    with psycopg.connect(empty_db) as conn:
        have = migrate.settings(conn)
        assert (have["chunk_seconds"], have["healpix_order"]) == ("1800", "1")
        assert (
            conn.execute("SELECT count(*) FROM pg_partition_tree('transits') WHERE isleaf").fetchone()[0]
            == 48
        )
    assert cli.main(args) == 0
    assert "schema up to date" in capsys.readouterr().out
    assert _tables(empty_db) == before
    with pytest.raises(migrate.MigrationError, match="healpix_order '1' != '2'"):
        migrate.init(empty_db, {"healpix_order": 2})
    assert cli.main(["db", "init", "--dsn", empty_db, "--healpix-order", "3"]) == 2
    assert "other settings" in capsys.readouterr().err
    with psycopg.connect(empty_db) as conn:
        assert migrate.settings(conn)["healpix_order"] == "1"


def test_migrate_without_init_fails_clearly(empty_db, capsys):
    with pytest.raises(migrate.MigrationError, match="run `soc db init` first"):
        migrate.migrate(empty_db)
    assert cli.main(["db", "migrate", "--dsn", empty_db]) == 2
    assert "soc db init" in capsys.readouterr().err
    assert _tables(empty_db) == 0


def test_an_empty_revision_removes_the_chunk(db):
    rows = make_transits(make_sources(40, seed=21), 2, seed=22)
    _load(db, rows, 6, 1)
    assert _load(db, take(rows, slice(0, 0)), 6, 2) == 0
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM transits").fetchone()[0] == 0
        assert conn.execute("SELECT revision, n_transits, pixels FROM transit_chunks").fetchall() == [
            (2, 0, [])
        ]


def test_a_revision_without_transits_loads_as_the_reducer_writes_it(db):
    _load(db, make_transits(make_sources(40, seed=23), 2, seed=24), 7, 1)
    with psycopg.connect(db) as conn:
        assert load_transits(conn, empty_transits(), 7, 2) == 0
        assert conn.execute("SELECT count(*) FROM transits WHERE chunk_id = 7").fetchone() == (0,)
        assert conn.execute("SELECT revision, n_transits FROM transit_chunks").fetchall() == [(2, 0)]


def test_the_partitioning_migration_finishes_the_job_when_run_again(empty_db):
    migrate.init(empty_db, {"healpix_order": 1})
    with psycopg.connect(empty_db, autocommit=True) as conn:  # as if 0002 had stopped half-way
        conn.execute("DROP TABLE transits_p47, sources_g11")
        conn.execute("DELETE FROM schema_migrations WHERE version = 2")
    assert [mg.version for mg in migrate.init(empty_db, {"healpix_order": 1})] == [2]
    with psycopg.connect(empty_db) as conn:
        for table in ("transits", "sources"):
            leaves = conn.execute("SELECT count(*) FROM pg_partition_tree(%s) WHERE isleaf", (table,))
            assert leaves.fetchone()[0] == 48


def test_a_chunk_without_transits_is_read_and_replaced_without_touching_a_partition(db):
    """A revision that wrote no transit records no pixel: reading or deleting it runs no statement on
    transits (an empty pixel list prunes no partition: the statement would plan and lock every one)."""
    _load(db, take(make_transits(make_sources(10, seed=25), 2, seed=26), slice(0, 0)), 8, 1)
    locked = (
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
        " WHERE l.pid = pg_backend_pid() AND c.relname LIKE 'transits%'"
    )
    with psycopg.connect(db) as conn:
        revision, columns = read_transits(conn, 8)
        assert revision == 1 and all(len(v) == 0 for v in columns.values())
        assert conn.execute(locked).fetchone() == (0,)
        assert delete_chunk(conn, 8) == 0
        assert conn.execute(locked).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM transit_chunks WHERE chunk_id = 8").fetchone() == (0,)


# What a schema is, read from the catalogue: every relation of schema public with its kind, partition bound
# and parent (tables and indexes), every column, constraint (with the table and name of the constraint it
# inherits) and index definition. Object ids and creation order are left out: they differ between any two
# installations.
_CATALOGUE = {
    "relations": """
        SELECT c.relname, c.relkind, pg_get_expr(c.relpartbound, c.oid), c.reltoastrelid <> 0,
               (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid)
        FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace""",
    "columns": """
        SELECT a.attrelid::regclass::text, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, col_description(a.attrelid, a.attnum)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped""",
    "constraints": """
        SELECT c.conrelid::regclass::text, c.conname, c.contype, c.conislocal, c.coninhcount, c.connoinherit,
               c.convalidated, pg_get_constraintdef(c.oid), c.conindid::regclass::text,
               p.conrelid::regclass::text, p.conname
        FROM pg_constraint c LEFT JOIN pg_constraint p ON p.oid = c.conparentid
        WHERE c.connamespace = 'public'::regnamespace""",
    "indexes": """
        SELECT x.indexrelid::regclass::text, pg_get_indexdef(x.indexrelid), x.indisprimary, x.indisvalid
        FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
        WHERE c.relnamespace = 'public'::regnamespace""",
}


def _catalogue(dsn: str) -> dict[str, set]:
    with psycopg.connect(dsn) as conn:
        return {what: set(conn.execute(sql).fetchall()) for what, sql in _CATALOGUE.items()}


def test_the_rewritten_partitioning_migration_gives_the_schema_of_the_text_it_replaced(
    pg_server, monkeypatch
):
    now = migrate.available()
    before = [dataclasses.replace(mg, sql=mg.superseded) if mg.superseded else mg for mg in now]
    assert [mg.version for mg in now if mg.superseded] == [2]
    new = migrated_database(pg_server, "soc_schema_now", {"healpix_order": ORDER})
    monkeypatch.setattr(migrate, "available", lambda: before)
    old = migrated_database(pg_server, "soc_schema_before", {"healpix_order": ORDER})
    monkeypatch.undo()
    got, want = _catalogue(new), _catalogue(old)
    assert len(want["relations"]) > 4 * N_PIX and len(want["constraints"]) > 4 * N_PIX
    for what in _CATALOGUE:
        only_new, only_old = sorted(got[what] - want[what])[:5], sorted(want[what] - got[what])[:5]
        assert got[what] == want[what], (what, only_new, only_old)
    # A database that applied the earlier text is up to date; one whose recorded text is neither is refused.
    assert migrate.migrate(old) == []
    with psycopg.connect(old, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = md5(checksum) WHERE version = 2")
    with pytest.raises(migrate.MigrationError, match="0002_main_database changed after it was applied"):
        migrate.migrate(old)
