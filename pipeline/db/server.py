"""A PostgreSQL 15 server in a directory of its own, for tests, benchmarks and throwaway runs.

It runs Debian's PostgreSQL binaries (postgresql-15) on a Unix socket in the server's own directory, so
several can run side by side. PostgreSQL refuses to run as root; when started by root the server runs as
the `postgres` system user, which owns the directory. Production clusters are created by the Ansible roles
with postgresql-common (pg_createcluster), not by this module.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("SOC_PG_BIN", "/usr/lib/postgresql/15/bin"))
DEFAULT_SETTINGS = {
    "max_locks_per_transaction": "2048",  # a query over 12,288 partitions locks each (main_database.md)
    "max_connections": "60",
    "shared_buffers": "256MB",
    "listen_addresses": "''",
    "log_min_messages": "warning",
}
THROWAWAY_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class ServerError(RuntimeError):
    pass


def _share_priority(pidfile: Path) -> None:
    """Give the server the CPU priority of the process that started it.

    pg_ctl starts the server in a session of its own, and with the kernel's autogroup scheduling
    (kernel.sched_autogroup_enabled) each session shares the CPU as one group, whatever its processes' nice
    values: a server started by tests running at a lower priority (`make test`'s unit tests beside the
    topology's suites) would take a full group's share. Its group gets the larger of this process's nice
    and its group's; nothing to do without autogroups (the server inherited this process's nice)."""
    try:
        own = Path("/proc/self/autogroup").read_text()
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    match = re.search(r"nice (-?\d+)", own)
    wanted = max(os.getpriority(os.PRIO_PROCESS, 0), int(match[1]) if match else 0)
    if wanted > 0:
        try:
            Path(f"/proc/{pid}/autogroup").write_text(f"{wanted}\n")
        except OSError:
            pass  # best effort: the server runs, at a full share


class LocalServer:
    """initdb + pg_ctl in DIRECTORY; dsn() names a database on its socket."""

    def __init__(self, directory: Path | None = None, settings: dict | None = None, port: int = 5432):
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="soc-pg-"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "run"
        self.log = self.dir / "server.log"
        self.port = port
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        if check and proc.returncode:
            raise ServerError(
                f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def init(self) -> LocalServer:
        if not (PG_BIN / "initdb").exists():
            raise ServerError(
                f"PostgreSQL 15 binaries not found in {PG_BIN} (install Debian's postgresql-15)"
            )
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            for parent in self.dir.resolve().parents:  # the postgres user must be able to reach the directory
                if not parent.stat().st_mode & 0o001:
                    raise ServerError(
                        f"{self.dir}: the postgres user cannot reach it ({parent} is not searchable)"
                    )
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")  # fmt: skip
        conf = "".join(f"{k} = {v}\n" for k, v in sorted(self.settings.items()))
        conf += f"unix_socket_directories = '{self.socket_dir}'\nport = {self.port}\n"
        (self.data / "postgresql.auto.conf").write_text(conf)
        if self._as_postgres:
            shutil.chown(self.data / "postgresql.auto.conf", "postgres", "postgres")
        return self

    def running(self) -> bool:
        return (self.data / "PG_VERSION").exists() and not self._run("pg_ctl", "-D", str(self.data), "status",
                                                                     check=False).returncode  # fmt: skip

    def start(self, timeout_s: float = 60.0) -> LocalServer:
        """Start the server (creating it first if needed); a server that is already running is left as is."""
        if not (self.data / "PG_VERSION").exists():
            self.init()
        elif self.running():
            return self
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout_s)), "start"
        )
        deadline = time.monotonic() + timeout_s
        while self._run(
            "pg_isready", "-h", str(self.socket_dir), "-p", str(self.port), check=False
        ).returncode:
            if time.monotonic() > deadline:
                raise ServerError(f"server did not accept connections within {timeout_s} s; see {self.log}")
            time.sleep(0.1)
        _share_priority(self.data / "postmaster.pid")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def kill(self) -> None:
        """Stop the server the hard way (for crash drills)."""
        self.stop(mode="immediate")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} dbname={dbname} user=postgres"

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()
