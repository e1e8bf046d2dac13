"""Chunk products for other data centres: Parquet + manifest, revisions, and the consumer's check."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import chunks
from pipeline import distribute as d

CS = 1800.0
CHUNK = 12
MIGRATION = Path(__file__).resolve().parents[1] / "pipeline" / "db" / "migrations" / "0002_main_database.sql"


def make_transits(n=200, chunk_id=CHUNK, revision=1, seed=5) -> dict[str, np.ndarray]:
    """The migration-0002 columns of n synthetic transits of one chunk revision, in random order."""
    rng = np.random.default_rng(seed)
    source_id = rng.choice(np.arange(1 << 40, (1 << 40) + 10 * n), n, replace=False).astype(np.int64)
    source_id[1::7] = source_id[0::7][: len(source_id[1::7])]  # some sources with several transits
    obt = chunk_id * CS + rng.uniform(0, CS, n)
    g_flux = rng.uniform(1e3, 1e6, n)
    g_flux[rng.uniform(size=n) < 0.1] = np.nan  # NULL
    return {
        "source_id": source_id,
        "healpix": (source_id >> 49).astype(np.int32),
        "obt": obt,
        "t": obt + 1e8,
        "chunk_id": np.full(n, chunk_id, np.int64),
        "revision": np.full(n, revision, np.int32),
        "apid": rng.integers(0x100, 0x130, n).astype(np.int16),
        "seq": rng.integers(0, 1 << 14, n).astype(np.int32),
        "fov": rng.integers(0, 2, n).astype(np.int16),
        "ccd_row": rng.integers(0, 7, n).astype(np.int16),
        "ac_pixel": rng.integers(0, 1966, n).astype(np.int16),
        "ra": rng.uniform(0, 360, n),
        "dec": rng.uniform(-90, 90, n),
        "pos_err_mas": rng.uniform(0.1, 5, n).astype(np.float32),
        "g_flux": g_flux,
        "g_flux_err": g_flux * 0.01,
        "g_mag": rng.uniform(8, 21, n),
        "g_mag_err": rng.uniform(0.001, 0.1, n),
        "n_good": rng.integers(0, 10, n).astype(np.int16),
        "flags": rng.integers(0, 16, n).astype(np.int32),
        "match_dist_mas": np.where(rng.uniform(size=n) < 0.05, np.nan, rng.uniform(0, 100, n)),
        "ambiguous": rng.uniform(size=n) < 0.05,
    }


def write(outbox, chunk_id=CHUNK, revision=1, transits=None, **kw) -> Path:
    transits = make_transits(chunk_id=chunk_id, revision=revision) if transits is None else transits
    kw = {"input_digest": f"md5-of-{chunk_id}-{revision}", "software_version": "0.1.0",
          "chunk_seconds": CS} | kw  # fmt: skip
    return d.write_product(outbox, chunk_id, revision, transits, **kw)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def save(path: Path, manifest: dict) -> None:
    path.write_bytes(d.manifest_text(manifest))


def rewrite_parquet(manifest_path: Path, mutate, *, recompute_digests: bool) -> None:
    """Replace the Parquet file by mutate(table), with a recomputed size and sha256 in the manifest (and,
    with recompute_digests, recomputed column and content digests: a complete forgery)."""
    m = load(manifest_path)
    path = manifest_path.with_name(m["file"])
    table = mutate(pq.read_table(path))
    data = d.parquet_bytes(table)
    path.write_bytes(data)
    m["byte_count"], m["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    if recompute_digests:
        m["columns"], m["content_sha256"] = d.table_digests(table)
    save(manifest_path, m)


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    i = table.schema.get_field_index(name)
    f = table.schema.field(i)
    return table.set_column(i, f, pa.array(values, type=f.type, from_pandas=True))


def col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


# ------------------------------------------------------------------------------------------------ format


def test_columns_are_those_of_migration_0002():
    sql = MIGRATION.read_text()
    body = re.search(r"CREATE TABLE (?:IF NOT EXISTS )?transits \((.*?)PRIMARY KEY", sql, re.DOTALL).group(1)
    types = "bigint|integer|smallint|double precision|real|boolean"
    cols = re.findall(rf"^\s*(\w+)\s+({types})\b([^,\n]*)", body, flags=re.MULTILINE)
    arrow = {"bigint": "int64", "integer": "int32", "smallint": "int16", "double precision": "double",
             "real": "float", "boolean": "bool"}  # fmt: skip
    assert len(cols) == 22
    want = [(name, arrow[t], "NOT NULL" not in rest) for name, t, rest in cols]
    assert [(f.name, str(f.type), f.nullable) for f in d.SCHEMA] == want
    assert d.OBT_MARGIN_S == chunks.END_MARGIN_S


def test_round_trip(tmp_path):
    tr = make_transits()
    mpath = write(tmp_path, transits=tr)
    assert mpath.name == f"chunk-{CHUNK}-r1.manifest.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"chunk-{CHUNK}-r1.manifest.json",
                                                          f"chunk-{CHUNK}-r1.parquet"]  # fmt: skip
    m = load(mpath)
    data = (tmp_path / f"chunk-{CHUNK}-r1.parquet").read_bytes()
    assert m["format"] == d.FORMAT == "soc-chunk-product/1"
    assert (m["chunk_id"], m["revision"], m["row_count"]) == (CHUNK, 1, 200)
    start, end = CHUNK * CS, (CHUNK + 1) * CS
    assert (m["chunk_start_obt"], m["chunk_end_obt"], m["chunk_seconds"]) == (start, end, CS)
    assert m["file"] == f"chunk-{CHUNK}-r1.parquet" and m["supersedes"] is None
    assert (m["byte_count"], m["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert (m["input_digest"], m["software_version"]) == (f"md5-of-{CHUNK}-1", "0.1.0")
    assert [(c["name"], c["type"]) for c in m["columns"]] == [(f.name, str(f.type)) for f in d.SCHEMA]
    assert m["content_sha256"] == d.content_digest(200, m["columns"])

    r = d.verify_product(mpath)
    assert r.ok, r.line()
    assert r.passed == d.CHECKS and not r.skipped and r.line().startswith("OK ")

    pf = pq.ParquetFile(tmp_path / m["file"])
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    assert set(pf.metadata.metadata) == {b"ARROW:schema"}  # no pandas metadata, no timestamps
    t = pf.read()
    assert t.schema == d.SCHEMA
    order = np.lexsort((tr["obt"], tr["source_id"]))
    for name in ("source_id", "obt", "seq", "ra", "ambiguous"):
        np.testing.assert_array_equal(col(t, name), tr[name][order])
    # NaN in a nullable column is NULL, as in the database
    assert t.column("g_flux").null_count == int(np.isnan(tr["g_flux"]).sum()) > 0
    np.testing.assert_array_equal(col(t, "g_mag"), tr["g_mag"][order].astype(np.float32))


def test_masked_values_are_null_and_not_null_columns_refuse_them(tmp_path):
    tr = make_transits()
    tr["g_mag"] = np.ma.masked_array(tr["g_mag"], mask=np.arange(200) % 10 == 0)
    mpath = write(tmp_path, transits=tr)
    assert pq.read_table(mpath.with_name(load(mpath)["file"])).column("g_mag").null_count == 20
    assert d.verify_product(mpath).ok
    tr = make_transits()
    tr["ra"][3] = np.nan
    with pytest.raises(d.ProductError, match="'ra' is NOT NULL"):
        write(tmp_path / "other", transits=tr)


def test_identical_bytes_and_idempotent(tmp_path):
    a = write(tmp_path / "a")
    tr = make_transits()
    shuffled = np.random.default_rng(0).permutation(200)
    b = write(tmp_path / "b", transits={k: v[shuffled] for k, v in tr.items()})  # row order is irrelevant
    for name in (a.name, f"chunk-{CHUNK}-r1.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "a").iterdir()}
    assert write(tmp_path / "a") == a  # again: nothing is written
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "a").iterdir()}
    assert after == before and len(after) == 2 and b.exists()


def test_identical_bytes_from_another_process(tmp_path):
    a = write(tmp_path / "a")
    code = (
        "import sys; from pathlib import Path; from tests.test_distribute import write;"
        " write(Path(sys.argv[1]))"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], cwd=root, check=True, timeout=60)
    for p in (a, a.with_name(f"chunk-{CHUNK}-r1.parquet")):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()


def test_different_content_under_the_same_name_is_refused(tmp_path):
    mpath = write(tmp_path)
    files = {p: p.read_bytes() for p in tmp_path.iterdir()}
    tr = make_transits()
    tr["g_mag"][0] += 0.5
    with pytest.raises(d.ProductConflict, match=r"chunk-12-r1\.parquet exists with different content"):
        write(tmp_path, transits=tr)
    # the same rows from another software version: the Parquet file is the same, the manifest is not
    with pytest.raises(d.ProductConflict, match=r"manifest\.json exists with different content"):
        write(tmp_path, software_version="0.2.0")
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == files
    assert d.verify_product(mpath).ok


def test_nothing_is_written_when_the_manifest_conflicts(tmp_path):
    mpath = write(tmp_path)
    parquet_of(mpath).unlink()
    tr = make_transits()
    tr["g_mag"][0] += 0.5
    with pytest.raises(d.ProductConflict, match=r"manifest\.json exists with different content"):
        write(tmp_path, transits=tr)
    assert [p.name for p in tmp_path.iterdir()] == [mpath.name]


def test_a_concurrent_writer_is_never_clobbered(tmp_path, monkeypatch):
    """Another writer publishes a different file between our check and our rename: ours must fail."""
    mpath = write(tmp_path)
    files = {p: p.read_bytes() for p in tmp_path.iterdir()}
    real, calls = d._same_file, []

    def not_there_yet(path, data):  # until we are about to publish the Parquet file, nothing is there
        calls.append(path.suffix)
        return None if calls.count(".parquet") <= 2 else real(path, data)

    monkeypatch.setattr(d, "_same_file", not_there_yet)
    tr = make_transits()
    tr["g_mag"][0] += 0.5
    with pytest.raises(d.ProductConflict):
        write(tmp_path, transits=tr)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == files and d.verify_product(mpath).ok


def test_a_product_without_manifest_is_incomplete_and_completed_by_writing_again(tmp_path):
    mpath = write(tmp_path)
    text = mpath.read_bytes()
    mpath.unlink()  # as if the writer died between the two renames
    assert d.list_products(tmp_path) == []
    assert write(tmp_path) == mpath and mpath.read_bytes() == text
    assert [r.manifest for r in d.list_products(tmp_path)] == [mpath]


def test_revisions_supersede(tmp_path):
    for chunk_id, revision in ((3, 1), (3, 2), (5, 1), (3, 3), (40, 1)):
        write(tmp_path, chunk_id=chunk_id, revision=revision)
    (tmp_path / "notes.txt").write_text("not a product")
    (tmp_path / "chunk-3-r4.parquet").write_bytes(b"no manifest yet")
    (tmp_path / ".chunk-3-r4.manifest.json.x1.tmp").write_bytes(b"{")
    m2 = load(tmp_path / "chunk-3-r2.manifest.json")
    assert m2["supersedes"] == "chunk-3-r1.parquet" and (tmp_path / m2["supersedes"]).exists()
    assert load(tmp_path / "chunk-3-r3.manifest.json")["supersedes"] == "chunk-3-r2.parquet"
    assert load(tmp_path / "chunk-5-r1.manifest.json")["supersedes"] is None

    refs = d.list_products(tmp_path)
    assert [(r.chunk_id, r.revision) for r in refs] == [(3, 1), (3, 2), (3, 3), (5, 1), (40, 1)]
    assert all(r.parquet.exists() for r in refs)
    latest = d.latest_revisions(tmp_path)
    assert {c: r.revision for c, r in latest.items()} == {3: 3, 5: 1, 40: 1}
    assert list(latest) == [3, 5, 40]
    assert latest[3].manifest == tmp_path / "chunk-3-r3.manifest.json"
    assert all(d.verify_product(r.manifest).ok for r in refs)  # superseded revisions stay valid


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("flags"), r"missing \['flags'\]"),
        (lambda t: t.update(extra=np.zeros(200)), r"unknown \['extra'\]"),
        (lambda t: t["chunk_id"].__setitem__(4, CHUNK + 1), "chunk_id: 1 row"),
        (lambda t: t["revision"].__setitem__(4, 2), "revision: 1 row"),
        (lambda t: t["obt"].__setitem__(4, (CHUNK + 2) * CS), "obt_in_chunk: 1 row"),
        (lambda t: [t[k].__setitem__(5, t[k][4]) for k in ("source_id", "obt")], "duplicate"),
        (lambda t: t.update(apid=np.full(200, 40000)), "'apid': values outside the range of int16"),
        (lambda t: t.update(ra=t["ra"].astype(str)), "'ra': <U"),
        (lambda t: t.update(seq=np.arange(5)), "different lengths"),
    ],
)
def test_writer_refuses_what_would_not_verify(tmp_path, change, message):
    tr = make_transits()
    change(tr)
    with pytest.raises(d.ProductError, match=message):
        write(tmp_path, transits=tr)
    assert not any(tmp_path.iterdir())


def test_writer_refuses_bad_arguments(tmp_path):
    with pytest.raises(d.ProductError, match="revision >= 1"):
        write(tmp_path, revision=0, transits=make_transits(revision=0))
    with pytest.raises(d.ProductError, match="chunk_seconds"):
        write(tmp_path, chunk_seconds=0.0)
    with pytest.raises(d.ProductError, match="input_digest"):
        write(tmp_path, input_digest="")


def test_obt_margin(tmp_path):
    """A transit's obt (mean over its windows) may lie past its chunk's end: within the margin it is fine."""
    tr = make_transits()
    tr["obt"][0] = (CHUNK + 1) * CS + 30.0
    assert d.verify_product(write(tmp_path / "a", transits=tr)).ok
    assert load(tmp_path / "a" / f"chunk-{CHUNK}-r1.manifest.json")["obt_margin_s"] == d.OBT_MARGIN_S
    with pytest.raises(d.ProductError, match="obt_in_chunk"):
        write(tmp_path / "b", transits=tr, obt_margin_s=0.0)


def test_empty_product(tmp_path):
    tr = {k: v[:0] for k, v in make_transits().items()}
    r = d.verify_product(write(tmp_path, transits=tr))
    assert r.ok and r.row_count == 0


# ------------------------------------------------------------------------------------ consumer's checks


@pytest.fixture
def product(tmp_path) -> Path:
    return write(tmp_path)


def parquet_of(mpath: Path) -> Path:
    return mpath.with_name(load(mpath)["file"])


def failures(r: d.VerifyResult) -> dict[str, str]:
    return {f.check: f.message for f in r.failures}


def test_flipped_byte(product):
    path = parquet_of(product)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))
    r = d.verify_product(product)
    f = failures(r)
    assert not r.ok and "sha256" in f and "size" not in f
    assert hashlib.sha256(data).hexdigest() in f["sha256"] and r.line().startswith("FAILED ")
    assert "CRC" in f["parquet_readable"]  # the pages carry CRCs: a reader alone notices the damage


def test_truncated_file(product):
    path = parquet_of(product)
    full = path.read_bytes()
    path.write_bytes(full[: len(full) - 100])
    r = d.verify_product(product)
    f = failures(r)
    assert {"size", "sha256", "parquet_readable"} <= set(f)  # every failure, not just the first
    assert f"{len(full) - 100} bytes, manifest says {len(full)} (truncated)" == f["size"]
    assert "row_count" in r.skipped and "obt_in_chunk" in r.skipped


def test_missing_file(product):
    parquet_of(product).unlink()
    r = d.verify_product(product)
    assert r.failed == ("file_present",) and "is missing" in r.failures[0].message
    assert set(r.skipped) == set(d.CHECKS[d.CHECKS.index("size") :])


def test_missing_or_broken_manifest(tmp_path, product):
    r = d.verify_product(tmp_path / "chunk-99-r1.manifest.json")
    assert r.failed == ("manifest",) and "no manifest file" in r.failures[0].message
    product.write_text(product.read_text()[:-40])
    r = d.verify_product(product)
    assert r.failed == ("manifest",) and "cannot read" in r.failures[0].message
    assert set(r.skipped) == set(d.CHECKS) - {"manifest"}


def test_manifest_fields_checked(product):
    m = load(product)
    m["format"], m["row_count"], m["extra"] = "soc-chunk-product/9", "200", 1
    del m["input_digest"]
    save(product, m)
    msg = failures(d.verify_product(product))["manifest"]
    for part in ("lacks ['input_digest']", "unknown fields ['extra']", "row_count is str, not int"):
        assert part in msg


def test_edited_row_count(product):
    m = load(product)
    m["row_count"] = 199
    save(product, m)
    f = failures(d.verify_product(product))
    assert f["row_count"] == "200 rows, manifest says 199"
    assert "disagrees with the manifest's own row count" in f["content_digest"]


def test_edited_digests(product):
    m = load(product)
    m["content_sha256"] = "0" * 64
    save(product, m)
    r = d.verify_product(product)
    assert r.failed == ("content_digest",) and "manifest says " + "0" * 64 in r.failures[0].message

    m = load(product)
    m["content_sha256"] = d.content_digest(200, m["columns"])
    m["sha256"] = "1" * 64
    save(product, m)
    assert d.verify_product(product).failed == ("sha256",)


def test_changed_value_with_recomputed_sha256(product):
    """Someone rewrites the file with one value changed and fixes size and sha256 in the manifest: the
    file is readable and its sha256 agrees, but the content digests tell which column changed."""

    def change(t):
        g = col(t, "g_mag").copy()
        g[np.flatnonzero(~np.isnan(g))[7]] += 0.01
        return set_column(t, "g_mag", g)

    rewrite_parquet(product, change, recompute_digests=False)
    r = d.verify_product(product)
    assert set(r.failed) == {"column_digests", "content_digest"}
    assert failures(r)["column_digests"] == "content differs in column(s) ['g_mag']"
    assert {"size", "sha256", "parquet_readable", "row_count", "columns"} <= set(r.passed)


def test_re_encoding_keeps_the_content_digest(product):
    """The digests describe values, not bytes: another encoding of the same rows has the same digests."""
    path = parquet_of(product)
    table = pq.read_table(path)
    pq.write_table(table, path, compression="snappy", use_dictionary=False)
    assert d.table_digests(pq.read_table(path))[1] == load(product)["content_sha256"]
    failed = set(d.verify_product(product).failed)
    assert "sha256" in failed and failed <= {"size", "sha256"}  # only the bytes changed


def test_forged_rows_outside_the_chunk(product):
    """A complete forgery (every digest recomputed) passes the integrity checks, by design; the semantic
    checks still catch rows that do not belong to the chunk."""

    def move(t):
        obt = col(t, "obt").copy()
        obt[[3, 50]] += 2 * CS  # still sorted: the rows' sources differ from their neighbours'
        return set_column(t, "obt", obt)

    rewrite_parquet(product, move, recompute_digests=True)
    r = d.verify_product(product)
    assert r.failed == ("obt_in_chunk",)
    assert failures(r)["obt_in_chunk"].startswith("2 row(s) with obt outside")


def test_forged_rows_wrong_chunk_revision_and_order(product):
    def damage(t):
        cid, rev = col(t, "chunk_id").copy(), col(t, "revision").copy()
        cid[10], rev[11:13] = CHUNK + 1, 2
        t = set_column(set_column(t, "chunk_id", cid), "revision", rev)
        return t.take(np.r_[np.arange(100), 99, np.arange(100, 199)[::-1]])  # a duplicate, then reversed

    rewrite_parquet(product, damage, recompute_digests=True)
    f = failures(d.verify_product(product))
    assert set(f) == {"chunk_id", "revision", "sorted_unique"}
    assert "1 row(s) with chunk_id other than 12 (e.g. [13])" == f["chunk_id"]
    assert f["revision"].startswith("2 row(s) with revision other than 1")
    assert "out of (source_id, obt) order, first at row index 102" in f["sorted_unique"]
    assert "1 duplicate (source_id, obt) key(s)" in f["sorted_unique"]


@pytest.mark.parametrize("forge_manifest", [False, True])
def test_changed_column_type(product, forge_manifest):
    def to_float32(t):
        return t.cast(t.schema.set(2, pa.field("obt", pa.float32(), False)))

    rewrite_parquet(product, to_float32, recompute_digests=forge_manifest)
    f = failures(d.verify_product(product))
    if forge_manifest:  # the manifest agrees with the file, but not with the format
        assert f["columns"] == "manifest declares obt float not null, the format double not null"
    else:
        assert f["columns"] == "obt is float in the file, manifest declares double"


def test_product_copied_under_another_revision(tmp_path, product):
    data, text = parquet_of(product).read_bytes(), product.read_bytes()
    (tmp_path / f"chunk-{CHUNK}-r2.parquet").write_bytes(data)
    (tmp_path / f"chunk-{CHUNK}-r2.manifest.json").write_bytes(text)
    r = d.verify_product(tmp_path / f"chunk-{CHUNK}-r2.manifest.json")
    assert r.failed == ("name",) and "not 'chunk-12-r1.manifest.json'" in r.failures[0].message


# --------------------------------------------------------------------------------------------------- CLI


def test_main_verify(tmp_path, capsys):
    good = write(tmp_path, revision=1)
    bad = write(tmp_path, revision=2)
    assert d.main_verify([str(good)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"OK {good} (chunk {CHUNK} r1, 200 rows)"]

    path = parquet_of(bad)
    path.write_bytes(path.read_bytes()[:-10])
    assert d.main_verify(["--outbox", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("OK ")
    assert out[1].startswith(f"FAILED {bad}: size: ")
    assert "; sha256: " in out[1] and "; parquet_readable: " in out[1]

    assert d.main_verify(["--outbox", str(tmp_path), "--latest"]) == 1
    assert len(capsys.readouterr().out.splitlines()) == 1

    (tmp_path / "chunk-7-r1.parquet").write_bytes(b"half")
    assert d.main_verify(["--outbox", str(tmp_path), str(good)]) == 1
    cap = capsys.readouterr()
    assert len(cap.out.splitlines()) == 3 and "chunk-7-r1.parquet has no manifest" in cap.err


def test_main_verify_usage(tmp_path, capsys):
    assert d.main_verify([]) == 2
    assert d.main_verify(["--outbox", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert d.main_verify(["--outbox", str(tmp_path)]) == 0  # empty: nothing failed
    assert "no complete products" in capsys.readouterr().err
    assert d.main_verify(["--help"]) == 0
    assert "soc verify-product" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []
