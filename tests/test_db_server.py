import subprocess
import sys
from pathlib import Path

import psycopg
import pytest


def test_starting_a_running_server_leaves_it_running(pg_server):
    assert pg_server.running()
    pg_server.start()  # make up runs `soc local-db start` every time
    with psycopg.connect(pg_server.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup scheduling here")
def test_a_server_gets_the_cpu_priority_of_the_session_that_starts_it():
    """pg_ctl starts the server in a session of its own: with autogroups it would take a full share of the
    CPU beside tests started at a lower priority, so it is given their session's (`make test`)."""
    script = (
        "from pathlib import Path; from pipeline.db.server import THROWAWAY_SETTINGS, LocalServer\n"
        "s = LocalServer(settings=THROWAWAY_SETTINGS).start()\n"
        "pid = (s.data / 'postmaster.pid').read_text().split()[0]\n"
        "group = lambda p: Path(f'/proc/{p}/autogroup').read_text().strip()\n"
        "print(group('self'), '|', group(pid))\n"
        "s.destroy()\n"
    )  # fmt: skip
    lower = 'echo 13 > /proc/self/autogroup && exec "$0" -c "$1"'  # a session of its own, at nice 13
    run = subprocess.run(["setsid", "--wait", "sh", "-c", lower, sys.executable, script],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    own, server = (part.strip() for part in run.stdout.split("|"))
    assert own.endswith("nice 13") and server.endswith("nice 13") and own.split()[0] != server.split()[0]
