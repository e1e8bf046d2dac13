"""The configuration file (write vs read DSN) and the landing-directory watcher."""

import os
import subprocess
import sys
import time

import psycopg
import pytest

from pipeline.config import ConfigError, load
from pipeline.intake import pending_files
from pipeline.landing import deliver


def _until(done, proc, seconds: float, what: str, log=None, every: float = 0.2) -> None:
    """Wait until done() is true, for at most `seconds`; fail at once, with its output (log, else its
    stderr), if the watcher proc exits."""
    deadline = time.monotonic() + seconds
    while not done():
        assert proc.poll() is None, log.read_text() if log else proc.stderr.read()
        assert time.monotonic() < deadline, f"not {what} within {seconds:.0f} s"
        time.sleep(every)


def _deliveries(conn) -> int:
    return conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]


def _quiet(conn, n_files: int) -> bool:
    """Every one of n_files deliveries ingested and no chunk due."""
    from pipeline.chunks import chunk_states

    return _deliveries(conn) == n_files and not any(st.due for st in chunk_states(conn))


def test_the_file_names_the_primary_and_the_replica(tmp_path, monkeypatch):
    monkeypatch.delenv("SOC_WRITE_DSN", raising=False)
    monkeypatch.delenv("SOC_READ_DSN", raising=False)
    f = tmp_path / "soc.yaml"
    f.write_text(
        "database:\n  write_dsn: host=primary\n  read_dsn: host=replica\nlanding: /srv/in\noutbox: /srv/out\n"
    )
    cfg = load(f)
    got = (cfg.write_dsn, cfg.reads, str(cfg.landing), str(cfg.outbox))
    assert got == ("host=primary", "host=replica", "/srv/in", "/srv/out")
    monkeypatch.setenv("SOC_READ_DSN", "host=other")
    assert load(f).reads == "host=other"
    f.write_text("database:\n  write_dsn: host=primary\n")
    monkeypatch.delenv("SOC_READ_DSN")
    assert load(f).reads == "host=primary"  # without a replica, reads go to the primary
    f.write_text("databse:\n  write_dsn: x\n")
    with pytest.raises(ConfigError, match="databse"):
        load(f)


def test_reports_read_from_the_read_dsn(tmp_path, new_db, monkeypatch):
    monkeypatch.delenv("SOC_WRITE_DSN", raising=False)
    monkeypatch.delenv("SOC_READ_DSN", raising=False)
    write, read = new_db(), new_db()
    with psycopg.connect(write, autocommit=True) as conn:
        conn.execute("DROP VIEW current_chunks")  # a report against this database would fail
    cfg = tmp_path / "soc.yaml"
    cfg.write_text(f"database:\n  write_dsn: '{write}'\n  read_dsn: '{read}'\n")
    out = tmp_path / "health.html"
    cmd = [sys.executable, "-m", "pipeline.cli", "--config", str(cfg), "report", "health",
           "--date", "2016-08-01", "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert out.exists() and "0 chunks" in res.stdout


def test_the_watcher_ingests_what_lands_within_a_deadline(faulty_day, new_db, tmp_path):
    dsn = new_db()
    landing = tmp_path / "landing"
    landing.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "ingest",
        "--watch",
        str(landing),
        "--interval",
        "0.2",
        "--dsn",
        dsn,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        files = pending_files(faulty_day / "passes")
        for f in files:  # the data file first, the sidecar last, as a ground station delivers
            deliver([f], landing)
        with psycopg.connect(dsn, autocommit=True) as conn:
            _until(lambda: _deliveries(conn) == len(files), proc, 60, "every delivery ingested")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_watcher_takes_each_delivery_once_not_at_every_look(faulty_day, new_db, pg_template, tmp_path):
    """A landing keeps its deliveries: the watcher must not read, hash and log them again at every look
    (an ingest_log row per delivery per look), only a delivery that changed, or every delivery again when
    it reconnects (the database may be another one)."""
    dsn = new_db()
    landing = tmp_path / "landing"
    landing.mkdir()
    f = pending_files(faulty_day / "passes")[0]
    deliver([f], landing)
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", "--watch", str(landing), "--interval", "0.1",
           "--dsn", dsn]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = "SELECT outcome, count(*) FROM ingest_log WHERE file_name = %s GROUP BY 1 ORDER BY 1"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            _until(lambda: conn.execute(log, (f.name,)).fetchall(), proc, 60, "ingested")
            time.sleep(2.0)  # some twenty looks
            assert conn.execute(log, (f.name,)).fetchall() == [("ingested", 1)]
            os.utime(landing / f.name)  # touched: taken again, found ingested already
            taken_again = lambda: len(conn.execute(log, (f.name,)).fetchall()) == 2  # noqa: E731
            _until(taken_again, proc, 30, "the touched delivery taken again")
            assert conn.execute(log, (f.name,)).fetchall() == [("already_ingested", 1), ("ingested", 1)]
        # the database replaced under the watcher (as a new validation clone is): a fresh one without the
        # delivery, under the same name; the watcher reconnects and must take the delivery into it
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        admin = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {params['dbname']} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {params['dbname']} TEMPLATE {pg_template}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            _until(lambda: _deliveries(conn) == 1, proc, 60, "the delivery taken into the new database")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_watcher_outlasts_a_database_that_does_not_take_writes_yet(faulty_day, new_db, tmp_path):
    """A new validation clone is a standby until promoted: a watcher that reaches it then must wait and
    retry, not exit (nothing restarts it on a host without systemd)."""
    dsn = new_db()
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    landing = tmp_path / "landing"
    landing.mkdir()
    f = pending_files(faulty_day / "passes")[0]
    deliver([f], landing)
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", "--watch", str(landing), "--interval", "0.2",
           "--dsn", dsn]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # several rounds against the read-only database
        assert proc.poll() is None, f"the watcher exited: {proc.stderr.read()}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
            _until(lambda: _deliveries(conn) == 1, proc, 60, "ingested after the database took writes again")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "read-only transaction" in err  # it said why it was waiting


def test_every_command_parses_its_documented_options():
    from pipeline.cli import build_parser

    p = build_parser()
    a = p.parse_args(["reduce", "--dsn", "x", "--outbox", "o", "--workers", "2", "--flush"])
    assert (a.dsn, a.outbox, a.workers, a.flush) == ("x", "o", 2, True)
    a = p.parse_args(["--config", "c.yaml", "report", "health", "--date", "2016-08-01"])
    assert (a.config, a.what, a.date) == ("c.yaml", "health", "2016-08-01")
    a = p.parse_args(["ingest", "--watch", "landing", "--interval", "1"])
    assert (a.watch, a.interval, a.files) == ("landing", 1.0, [])
    a = p.parse_args(["run-day", "--date", "2016-08-02", "--scale", "0.002"])
    assert (a.date, a.scale) == ("2016-08-02", 0.002)


def test_the_watcher_also_reduces_what_the_landed_data_made_due(faulty_day, new_db, tmp_path):
    dsn = new_db()
    with psycopg.connect(dsn, autocommit=True) as conn:  # the working catalogue: the simulated day's sky
        conn.execute("INSERT INTO soc_settings VALUES ('catalogue_seed', 11), ('catalogue_scale', 0.0003)")
    landing, outbox = tmp_path / "landing", tmp_path / "outbox"
    landing.mkdir()
    cfg = tmp_path / "soc.yaml"  # the outbox from the configuration file, as the service has it
    cfg.write_text(f"database:\n  write_dsn: '{dsn}'\nlanding: {landing}\noutbox: {outbox}\n")
    log = tmp_path / "watch.log"
    cmd = [sys.executable, "-m", "pipeline.cli", "--config", str(cfg), "ingest", "--watch", "landing",
           "--reduce", "--workers", "1", "--interval", "0.2"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        files = pending_files(faulty_day / "passes")
        for f in files:
            deliver([f], landing)
        with psycopg.connect(dsn, autocommit=True) as conn:
            _until(lambda: _quiet(conn, len(files)), proc, 240, "everything ingested and reduced", log)
            reduced = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert reduced > 0 and "chunk revision(s) reduced" in log.read_text()
    assert len(list(outbox.rglob("*.parquet"))) > 0
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "reduce", "--dsn", dsn, "--workers", "1"],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0 and "0 chunk revision(s) reduced" in res.stdout, res.stdout + res.stderr


def _watcher(dsn: str, landing, log, *options: str):
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", "--watch", str(landing), "--reduce",
           "--workers", "2", "--interval", "0.2", "--dsn", dsn, *options]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def test_a_failed_reduction_is_tried_again_as_soon_as_a_delivery_brings_data(faulty_day, new_db, tmp_path):
    """The watcher's first reduction fails (the working catalogue is not set yet: a clear error, retried
    after --retry-after seconds); once it is set, the deliveries that land are reduced at once, not after the
    retry delay: new data may be what a failed reduction lacked. (A long delay: a test run at a low CPU
    priority beside busy processes must not reach it.)"""
    retry_after = 900.0
    dsn = new_db()
    landing, log = tmp_path / "landing", tmp_path / "watch.log"
    landing.mkdir()
    with open(log, "w") as out:
        proc = _watcher(dsn, landing, out, "--retry-after", f"{retry_after:g}")
    try:
        _until(lambda: "reduction failed" in log.read_text(), proc, 60, "the first reduction failed", log)
        failed_at = time.monotonic()
        assert "catalogue_seed" in log.read_text()  # what is missing, said
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO soc_settings VALUES ('catalogue_seed', 11), ('catalogue_scale', 0.0003)"
            )
            deliver(pending_files(faulty_day / "passes"), landing)
            before_retry = retry_after * 0.75 - (time.monotonic() - failed_at)
            reduced = lambda: conn.execute("SELECT count(*) FROM chunks").fetchone()[0] > 0  # noqa: E731
            _until(reduced, proc, before_retry, "a chunk reduced well before the retry delay", log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_quiet(dsn: str, n_files: int, proc, log, timeout: float) -> list[tuple]:
    """Every delivery ingested and nothing due, within timeout seconds -> the chunk revisions made."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _until(lambda: _quiet(conn, n_files), proc, timeout, "ingested and reduced", log)
        return conn.execute(
            "SELECT chunk_id, revision, reason, gaps, n_packets, input_digest, horizon_obt, n_transits"
            " FROM chunks ORDER BY chunk_id, revision"
        ).fetchall()


def test_two_watchers_fed_by_one_tee_reduce_alike_however_their_looks_fall(faulty_day, new_db, tmp_path):
    """Operations' watcher takes each delivery as it lands; validation's finds the whole backlog at once
    (its service was stopped while a clone was taken). Deliveries arrive out of name order, with a tight
    downlink's backlog across passes and every fault: the chunk revisions, their reasons, gaps and horizons
    must be the same in both (each delivery is ingested and reduced in turn, in the order of arrival)."""
    from pipeline.landing import Tee

    dsns = [new_db(), new_db()]
    for dsn in dsns:  # the working catalogue: the simulated day's sky
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO soc_settings VALUES ('catalogue_seed', 11), ('catalogue_scale', 0.0003)"
            )
    incoming, ops, val = (tmp_path / d for d in ("incoming", "ops", "val"))
    for d in (incoming, ops, val):
        d.mkdir()
    files = pending_files(faulty_day / "passes")
    files = files[1::2] + files[0::2]  # every other pass late: a backlog of passes, out of name order
    logs = [tmp_path / "ops.log", tmp_path / "val.log"]
    tee = Tee(incoming, [ops, val])
    with open(logs[0], "w") as out:
        proc = _watcher(dsns[0], ops, out)
    try:
        for n, f in enumerate(files, 1):  # as a ground station delivers: data file, then sidecar
            deliver([f], incoming)
            tee.run_once()
            _wait_quiet(dsns[0], n, proc, logs[0], 300)  # operations took this delivery alone
        ops_chunks = _wait_quiet(dsns[0], len(files), proc, logs[0], 300)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with open(logs[1], "w") as out:
        proc = _watcher(dsns[1], val, out)
    try:
        val_chunks = _wait_quiet(dsns[1], len(files), proc, logs[1], 600)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert ops_chunks and {r[2] for r in ops_chunks} >= {"complete", "deadline"}, ops_chunks
    assert any(r[3] for r in ops_chunks), "no chunk was reduced with a gap: the test shows nothing"
    assert val_chunks == ops_chunks


def test_the_watch_and_tee_options_parse():
    from pipeline.cli import build_parser

    p = build_parser()
    a = p.parse_args(["ingest", "--watch", "landing", "--reduce", "--outbox", "o", "--workers", "2"])
    assert (a.watch, a.reduce, a.outbox, a.workers) == ("landing", True, "o", 2)
    a = p.parse_args(["tee", "in", "--to", "a", "--to", "b", "--state", "s", "--once"])
    assert (a.incoming, a.to, a.state, a.once, a.interval) == ("in", ["a", "b"], "s", True, 5.0)
    with pytest.raises(SystemExit):
        p.parse_args(["tee", "in"])  # at least one landing


def test_db_init_fixes_the_working_catalogue_and_says_whether_it_changed_anything(pg_server):
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE soc_init_cli")
    dsn = pg_server.dsn("soc_init_cli")
    cmd = [sys.executable, "-m", "pipeline.cli", "db", "init", "--dsn", dsn, "--healpix-order", "0",
           "--catalogue-seed", "3", "--catalogue-scale", "0.001"]  # fmt: skip
    first, again = (subprocess.run(cmd, capture_output=True, text=True) for _ in range(2))
    assert first.returncode == 0 and "migration(s) applied" in first.stdout, first.stderr
    assert again.returncode == 0 and again.stdout.strip() == "schema up to date"  # what Ansible parses
    with psycopg.connect(dsn) as conn:
        got = dict(conn.execute("SELECT key, value FROM soc_settings").fetchall())
    assert (got["catalogue_seed"], got["catalogue_scale"], got["healpix_order"]) == ("3", "0.001", "0")
    clash = subprocess.run([*cmd[:-1], "0.002"], capture_output=True, text=True)
    assert clash.returncode == 2 and "catalogue_scale" in clash.stderr
