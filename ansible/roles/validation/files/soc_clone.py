#!/usr/bin/python3
"""soc-clone: the validation environment's clone of the Main Database, from a btrfs snapshot.

The source is a hot standby whose data directory lives in a btrfs subvolume. A clone costs a CHECKPOINT
on the standby (a restartpoint: nothing runs on the primary), two snapshots, and the start and promotion
of a PostgreSQL cluster of its own on the snapshot; its time does not grow with the size of the database.
A standby whose pg_wal links off the volume (so that snapshots never hold up its WAL flushes) gets the WAL
from its redo point on copied into the snapshot.

    soc-clone take       a new clone of the source as it is now
    soc-clone reset      the clone back to the state of its last take (same data, same LSN)
    soc-clone destroy    stop the clone and delete its subvolumes (waits until btrfs has freed them)
    soc-clone status     what is there
    soc-clone sync-passwords   the login roles' passwords as operations has them now (take and reset
                         do it too; provisioning runs it after the vault's passwords change)

Every take, refusal and destroy is appended to the eLog table of the operations primary (the first of
`elog_dsns` that accepts the row; if none does, the entry is kept in a spool file and sent by the next
run). Each command prints a JSON summary on stdout; exit status 0 = done, 1 = failed, 3 = refused.

The configuration is a JSON file, normally written by the Ansible role `validation` next to the clone
cluster's configuration: /etc/postgresql/<version>/<cluster>/soc-clone.json (found when it is the only
one; else give --config). Python 3 standard library only; runs as root (btrfs, pg_ctlcluster), and runs
psql and pg_amcheck as the cluster owner.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import glob
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager

CONFIG_GLOB = "/etc/postgresql/*/*/soc-clone.json"
BASE_SUFFIX = ".base"  # the read-only snapshot a reset starts again from
STATE_FILE = "soc-clone.json"  # in the clone subvolume, outside the data directory
EXIT_FAILED, EXIT_REFUSED = 1, 3

DEFAULTS = {
    "version": "15",
    "owner": "postgres",
    "port": 5432,
    "dbname": "soc",
    "min_free": "15%",  # refuse below this much free space on the volume ("15%" or "4G")
    "verify_max_bytes": 64 << 20,  # pg_amcheck and exact row counts for tables up to this size
    "amcheck_schemas": ["pg_catalog"],
    "grants": [],  # [[role, member], ...]: GRANT role TO member, in the clone only
    "elog_dsns": [],
    "spool_dir": "/var/lib/soc-clone",
    "timeout": 600,  # seconds pg_ctl may wait for start and promotion
    "nice": 19,  # CPU and I/O priority of soc-clone and the clone's server (0: as is)
}


class Refused(Exception):
    """The clone is not attempted (and the refusal is recorded)."""


class Failed(Exception):
    pass


# ---------------------------------------------------------------------------------------------- helpers


def lsn_int(lsn: str) -> int:
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.I)
    if not m:
        raise Failed(f"not a size: {text!r} (e.g. 4G, or a percentage like 15%)")
    return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))


def quote(value) -> str:
    """An SQL literal (standard_conforming_strings is on), or NULL."""
    if value is None:
        return "NULL"
    return "'" + str(value).replace("'", "''") + "'"


class Clone:
    def __init__(self, cfg: dict):
        self.cfg = {**DEFAULTS, **cfg}
        c = self.cfg
        for key in (
            "cluster",
            "source_cluster",
            "source_subvolume",
            "clone_subvolume",
            "volume",
            "socket_dir",
            "source_socket_dir",
        ):
            if not c.get(key):
                raise Failed(f"configuration lacks {key!r}")
        self.version = str(c["version"])
        self.name = f"{self.version}/{c['cluster']}"
        self.subvol = c["clone_subvolume"].rstrip("/")
        self.base = self.subvol + BASE_SUFFIX
        # the data directory sits at the same place inside the clone as inside the source subvolume
        self.data_rel = c.get("data_subdir", "data")
        self.data = os.path.join(self.subvol, self.data_rel)
        self.bindir = c.get("bindir") or f"/usr/lib/postgresql/{self.version}/bin"
        self.timings: dict[str, float] = {}
        self.owner = pwd.getpwnam(c["owner"])

    # -- processes
    def run(self, argv, *, as_owner=False, check=True, input=None, timeout=None):
        kwargs = {}
        if as_owner and os.geteuid() != self.owner.pw_uid:
            kwargs = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
        env = dict(os.environ, LC_ALL="C", PGAPPNAME="soc-clone")
        if as_owner:
            env["HOME"] = self.owner.pw_dir
        proc = subprocess.run(
            argv, capture_output=True, text=True, input=input, env=env, cwd="/", timeout=timeout, **kwargs
        )
        if check and proc.returncode != 0:
            raise Failed(
                f"{' '.join(argv[:4])}... exit {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc

    def popen(self, argv):
        """argv as the cluster owner, in the background (communicate() for its output)."""
        kwargs = {}
        if os.geteuid() != self.owner.pw_uid:
            kwargs = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
        env = dict(os.environ, LC_ALL="C", PGAPPNAME="soc-clone", HOME=self.owner.pw_dir)
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/", **kwargs
        )

    def psql(self, socket_dir: str, sql: str, dbname: str | None = None, check=True):
        dsn = f"host={socket_dir} port={self.cfg['port']} dbname={dbname or self.cfg['dbname']}"
        return self.run(
            [f"{self.bindir}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn],
            as_owner=True,
            input=sql,
            check=check,
        )

    def ctl(self, action: str, *extra: str, check=True):
        return self.run(
            ["pg_ctlcluster", self.version, self.cfg["cluster"], action, *extra],
            check=check,
            timeout=self.cfg["timeout"] + 30,
        )

    def pg_ctl(self, action: str, *extra: str, check=True):
        """pg_ctl on the clone's data directory, as the cluster owner."""
        return self.run(
            [f"{self.bindir}/pg_ctl", action, "-D", self.data, "-s", *extra],
            as_owner=True,
            check=check,
            timeout=self.cfg["timeout"] + 30,
        )

    @contextmanager
    def phase(self, name: str):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.monotonic() - t0, 3)

    @contextmanager
    def lock(self):
        path = f"/run/lock/soc-clone-{self.version}-{self.cfg['cluster']}.lock"
        with open(path, "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Failed(f"another soc-clone is working on {self.name}") from None
            yield

    # -- state
    def running(self) -> bool:
        return self.ctl("status", check=False).returncode == 0

    def stop(self) -> bool:
        """Stop the clone without a shutdown checkpoint: what it holds is thrown away."""
        if not os.path.exists(os.path.join(self.data, "postmaster.pid")):
            return False
        proc = self.pg_ctl("stop", "-m", "immediate", check=False)
        if proc.returncode != 0 and self.running():
            raise Failed(f"pg_ctl stop {self.name}: {proc.stderr.strip()}")
        return proc.returncode == 0

    @staticmethod
    def is_subvolume(path: str) -> bool:
        try:
            return os.lstat(path).st_ino == 256  # the root directory of every btrfs subvolume
        except FileNotFoundError:
            return False

    def delete_subvolumes(self, paths: list[str]) -> list[str]:
        subvols = [p for p in paths if self.is_subvolume(p)]
        if subvols:
            self.run(["btrfs", "subvolume", "delete", *subvols])
        return subvols + [p for p in paths if p not in subvols and self.delete_directory(p)]

    def delete_directory(self, path: str) -> bool:
        if os.path.isdir(path):
            # the directory a fresh cluster was created in before its first clone, or one left over
            leftovers = os.listdir(path)
            if leftovers and not os.path.isfile(os.path.join(path, self.data_rel, "PG_VERSION")):
                raise Failed(f"{path} is not a btrfs subvolume and not an empty cluster: left alone")
            self.run(["rm", "-rf", "--one-file-system", path])
            return True
        return False

    def free_space(self) -> dict:
        out = self.run(["btrfs", "filesystem", "usage", "-b", self.cfg["volume"]]).stdout
        size = int(re.search(r"Device size:\s+(\d+)", out).group(1))
        free = int(re.search(r"Free \(estimated\):\s+(\d+)", out).group(1))
        margin = str(self.cfg["min_free"]).strip()
        need = int(size * float(margin[:-1]) / 100) if margin.endswith("%") else parse_size(margin)
        return {
            "volume": self.cfg["volume"],
            "size_bytes": size,
            "free_bytes": free,
            "min_free": margin,
            "min_free_bytes": need,
            "enough": free >= need,
        }

    def read_state(self) -> dict | None:
        try:
            with open(os.path.join(self.subvol, STATE_FILE)) as fh:
                return json.load(fh)
        except (FileNotFoundError, ValueError):
            return None

    def write_state(self, path: str, state: dict) -> None:
        tmp = os.path.join(path, STATE_FILE + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh, indent=1)
        os.replace(tmp, os.path.join(path, STATE_FILE))

    # -- eLog
    def elog(self, kind: str, lsn: str | None, seconds: float | None, ok: bool | None, details: dict) -> str:
        """Append to the eLog of the operations primary; spool what cannot be sent yet."""
        spool = os.path.join(self.cfg["spool_dir"], f"{self.version}-{self.cfg['cluster']}.elog.jsonl")
        entries = []
        if os.path.exists(spool):
            with open(spool) as fh:
                entries = [json.loads(line) for line in fh if line.strip()]
        entries.append(
            {
                "kind": kind,
                "subject": self.cfg["cluster"],
                "lsn": lsn,
                "seconds": seconds,
                "ok": ok,
                "details": details,
                "logged_at": dt.datetime.now(dt.UTC).isoformat(),
            }
        )
        sql = (
            "BEGIN;\n"
            + "".join(
                "INSERT INTO elog (logged_at, kind, subject, lsn, seconds, ok, details) VALUES "
                f"({quote(e['logged_at'])}, {quote(e['kind'])}, {quote(e['subject'])}, {quote(e['lsn'])}, "
                f"{quote(e['seconds'])}, {quote(e['ok'])}, {quote(json.dumps(e['details']))});\n"
                for e in entries
            )
            + "COMMIT;\n"
        )
        errors = []
        for dsn in self.cfg["elog_dsns"]:
            proc = self.run(
                [f"{self.bindir}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn],
                as_owner=True,
                input=sql,
                check=False,
            )
            if proc.returncode == 0:
                if os.path.exists(spool):
                    os.unlink(spool)
                return "recorded" + (f" (with {len(entries) - 1} spooled)" if len(entries) > 1 else "")
            errors.append(proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"])
        os.makedirs(os.path.dirname(spool), mode=0o700, exist_ok=True)
        with open(spool, "a") as fh:
            fh.write(json.dumps(entries[-1]) + "\n")
        return f"spooled to {spool}: " + "; ".join(e[0] for e in errors)

    # -- the clone
    def lower_priority(self) -> None:
        """Operations come first on a shared host: soc-clone and everything it starts (the clone's server
        too, until the clone is ready) get a lower CPU priority and the lowest best-effort I/O priority."""
        if int(self.cfg["nice"]) > 0:
            os.nice(int(self.cfg["nice"]))
            self.run(["ionice", "-c", "2", "-n", "7", "-p", str(os.getpid())], check=False)

    def start_server(self) -> int | None:
        """pg_ctl start -w with the options pg_ctlcluster gives it (pg_ctlcluster start would cost 2 s more:
        after pg_ctl it sleeps 0.5 s, then probes the socket until three connections in a row succeed,
        0.5 s apart), the server put at soc-clone's priority as soon as it has a pid, before the WAL replay
        that makes most of a start. pg_ctl starts it in a session of its own, and with the kernel's
        autogroup scheduling (kernel.sched_autogroup_enabled) a session's processes share the CPU as one
        group whatever their nice: the clone's replay would take as much CPU as the standby's walreceiver,
        which operations' synchronous commits wait for. Its group gets soc-clone's nice until the clone is
        ready (restore_priority). Returns the postmaster's pid."""
        conf = f"/etc/postgresql/{self.version}/{self.cfg['cluster']}"
        log = (
            self.cfg.get("log_file")
            or f"/var/log/postgresql/postgresql-{self.version}-{self.cfg['cluster']}.log"
        )
        options = (
            f'-c config_file="{conf}/postgresql.conf" '
            f'-c external_pid_file="/var/run/postgresql/{self.version}-{self.cfg["cluster"]}.pid"'
        )
        proc = self.popen(
            [f"{self.bindir}/pg_ctl", "start", "-D", self.data, "-s", "-l", log, "-o", options,
             "-w", "-t", str(self.cfg["timeout"])]
        )  # fmt: skip
        pidfile, pid = os.path.join(self.data, "postmaster.pid"), None
        while True:
            started = proc.poll() is not None  # once more after pg_ctl ends, if the pid came late
            if pid is None and (pid := self.postmaster_pid(pidfile)) is not None:
                self.set_group_nice(pid, int(self.cfg["nice"]))
            if started:
                break
            time.sleep(0.005 if pid is None else 0.05)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise Failed(f"pg_ctl start exit {proc.returncode}: {(err or out).strip()[-2000:]}")
        return pid

    @staticmethod
    def postmaster_pid(pidfile: str) -> int | None:
        try:
            with open(pidfile) as fh:
                return int(fh.readline())
        except (OSError, ValueError):  # not written yet, or half written
            return None

    def set_group_nice(self, pid: int, nice: int) -> None:
        """The nice of the autogroup of process pid (nothing to do where the kernel has no autogroups: there
        the processes' own nice counts)."""
        try:
            with open(f"/proc/{pid}/autogroup", "w") as fh:
                fh.write(f"{nice}\n")
        except OSError:
            pass

    def restore_priority(self, postmaster: int | None) -> None:
        """The take is done: the clone serves the validation environment at the priority of any server (its
        group's nice, its processes' nice and I/O priority back to the defaults; new backends inherit the
        postmaster's)."""
        if postmaster is None or int(self.cfg["nice"]) <= 0:
            return
        self.set_group_nice(postmaster, 0)
        children = [postmaster]
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        children.append(int(entry))
            except (OSError, ValueError, IndexError):  # not a process, or one that just ended
                continue
        for pid in children:
            try:
                os.setpriority(os.PRIO_PROCESS, pid, 0)
            except OSError:
                pass
        self.run(["ionice", "-c", "0", "-p", *map(str, children)], check=False)

    def take(self, reset: bool = False) -> dict:
        t_start = time.monotonic()
        self.lower_priority()
        out: dict = {"action": "reset" if reset else "take", "cluster": self.name}
        with self.phase("space"):
            space = self.free_space()
        out["space"] = space
        if not space["enough"]:
            msg = (
                f"clone refused: {space['free_bytes'] / 2**30:.1f} GiB free on {space['volume']}, "
                f"below the margin of {space['min_free']} ({space['min_free_bytes'] / 2**30:.1f} GiB). "
                f"Destroy the clone (soc-clone destroy) or grow the volume; nothing was changed."
            )
            out.update(ok=False, refused=msg)
            out["elog"] = self.elog("clone_refused", None, None, False, {"action": out["action"], **space})
            raise Refused(json.dumps(out))
        if reset and not self.is_subvolume(self.base):
            raise Failed(f"nothing to reset to: {self.base} does not exist (take a clone first)")

        with self.phase("stop"):
            self.stop()
        with self.phase("delete"):
            self.delete_subvolumes([self.subvol] if reset else [self.subvol, self.base])
        os.makedirs(os.path.dirname(self.subvol), exist_ok=True)

        if reset:
            source = self.read_base_state()
            with self.phase("snapshot"):
                self.run(["btrfs", "subvolume", "snapshot", self.base, self.subvol])
        else:
            with self.phase("checkpoint"):
                source = self.checkpoint_source()
            with self.phase("snapshot"):
                self.run(["btrfs", "subvolume", "snapshot", self.cfg["source_subvolume"], self.subvol])
            # the WAL goes into the clone itself, whose page cache the replay then reads it from (a snapshot's
            # files have a page cache of their own); the base, for resets, is a read-only snapshot of the
            # clone as it is about to start, with the source's state
            with self.phase("wal"):
                source.update(self.own_wal(self.data))
            self.prepare_copy()
            self.write_state(self.subvol, {"source": source})
            with self.phase("snapshot"):
                self.run(["btrfs", "subvolume", "snapshot", "-r", self.subvol, self.base])
        out["source"] = source
        with self.phase("start"):
            postmaster = self.start_server()
        with self.phase("promote"):
            self.pg_ctl("promote", "-w", "-t", str(self.cfg["timeout"]))
        with self.phase("passwords"):
            out["passwords_synced"] = self.sync_passwords()
        verify = self.verify(source)
        self.restore_priority(postmaster)
        out["ready_s"] = round(time.monotonic() - t_start, 3)  # usable and verified
        out["verify"] = verify
        out["ok"] = verify["ok"]
        out["lsn"] = verify.get("lsn")
        out["taken_at"] = source.get("taken_at")
        out["seconds"] = dict(self.timings)
        out["total_s"] = round(time.monotonic() - t_start, 3)
        state = {k: out[k] for k in ("action", "cluster", "ok", "lsn", "source", "taken_at", "ready_s")}
        state["verify"] = {k: v for k, v in verify.items() if k != "counts"}
        self.write_state(self.subvol, state)
        with self.phase("record"):
            details = {
                "action": out["action"],
                "source": source,
                "seconds": out["seconds"],
                "verify": verify,
                "free_bytes": space["free_bytes"],
            }
            out["elog"] = self.elog("clone", out["lsn"], out["ready_s"], out["ok"], details)
        out["seconds"] = dict(self.timings)
        out["total_s"] = round(time.monotonic() - t_start, 3)
        if not out["ok"]:
            raise Failed(json.dumps(out))
        return out

    def checkpoint_source(self) -> dict:
        """A restartpoint on the standby, so that the clone replays little WAL; nothing on the primary."""
        sql = """
            SELECT pg_is_in_recovery() AS standby \\gset
            \\if :standby
            CHECKPOINT;
            \\endif
            SELECT json_build_object(
                'standby', pg_is_in_recovery(),
                'replay_lsn', coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn()),
                'redo_lsn', (pg_control_checkpoint()).redo_lsn,
                'timeline', (pg_control_checkpoint()).timeline_id,
                'taken_at', now(),
                'database_bytes', pg_database_size(current_database()));
        """
        info = json.loads(self.psql(self.cfg["source_socket_dir"], sql).stdout.strip().splitlines()[-1])
        info["cluster"] = self.cfg["source_cluster"]
        if not info["standby"]:
            # after a switchover the source may be the operations primary: no CHECKPOINT there
            info["note"] = "source is not a standby: no CHECKPOINT; the clone replays from its last one"
        return info

    def own_wal(self, data: str) -> dict:
        """A standby whose pg_wal links off the volume (db_replica_wal_directory, so that a snapshot's commit
        never holds up the WAL flushes synchronous commits wait for) leaves only the link in the snapshot.
        The snapshot's data directory then gets a pg_wal of its own: the segments from its redo point to the
        one the standby had flushed WAL into after the snapshot, copied from the standby's WAL directory, so
        it holds all the WAL the snapshot's pages depend on (the standby flushes WAL before it writes a
        page); replaying further is what a standby does anyway. The segments after that one are recycled
        files (old WAL under future names, up to max_wal_size) that the copy has no use for.
        Returns the bytes copied and the end of the WAL copied (None: pg_wal was in the snapshot)."""
        wal = os.path.join(data, "pg_wal")
        if not os.path.islink(wal):
            return {"wal_copied_bytes": None}
        source_wal = os.readlink(wal)
        control = self.run([f"{self.bindir}/pg_controldata", data], as_owner=True).stdout
        match = re.search(r"^Latest checkpoint's REDO WAL file:\s*([0-9A-F]{24})$", control, re.M)
        if not match:
            raise Failed(f"pg_controldata {data} names no REDO WAL file")
        redo_segment = match.group(1)[8:]  # the segment number; the timeline is the first 8 digits
        end_lsn = self.flushed_lsn()
        end_segment = self.segment_name(end_lsn, control)
        os.unlink(wal)
        copied = 0
        for directory in (wal, os.path.join(wal, "archive_status")):
            os.mkdir(directory, 0o700)
            os.chown(directory, self.owner.pw_uid, self.owner.pw_gid)
        names = sorted(os.listdir(source_wal))
        wanted = [
            n
            for n in names
            if n.endswith(".history")
            or (re.fullmatch(r"[0-9A-F]{24}", n) and redo_segment <= n[8:] <= end_segment)
        ]
        for name in wanted:
            target = os.path.join(wal, name)
            try:
                shutil.copyfile(os.path.join(source_wal, name), target)
            except FileNotFoundError:  # recycled meanwhile: past the end of what the copy needs
                continue
            os.chown(target, self.owner.pw_uid, self.owner.pw_gid)
            os.chmod(target, 0o600)
            copied += os.path.getsize(target)
        return {"wal_copied_bytes": copied, "wal_end_lsn": end_lsn}

    def flushed_lsn(self) -> str:
        """The end of the WAL the source has on disk now (a standby's received and flushed WAL, or what it
        replayed from its own pg_wal; a primary's flushed WAL)."""
        sql = """
            SELECT CASE WHEN pg_is_in_recovery()
                        THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
                        ELSE pg_current_wal_flush_lsn() END;
        """
        return self.psql(self.cfg["source_socket_dir"], sql).stdout.strip().splitlines()[-1]

    @staticmethod
    def segment_name(lsn: str, control: str) -> str:
        """The segment part (the last 16 hex digits) of the name of the WAL file that holds lsn."""
        match = re.search(r"^Bytes per WAL segment:\s*(\d+)$", control, re.M)
        size = int(match.group(1)) if match else 16 << 20
        segment = lsn_int(lsn) // size
        per_id = 0x100000000 // size
        return f"{segment // per_id:08X}{segment % per_id:08X}"

    def sync_passwords(self) -> list[str]:
        """The login roles' passwords as operations has them now. A clone keeps those of its snapshot, and
        a reset goes back to them, but the vault's may have changed since (provisioning sets them on the
        primary; the standby has them by replication): copy the SCRAM verifiers, never a password, from
        the source to the clone. Returns the roles changed."""
        query = (
            "SELECT coalesce(json_object_agg(rolname, rolpassword), '{}') FROM pg_authid"
            " WHERE rolcanlogin AND rolpassword IS NOT NULL"
        )
        source = json.loads(self.psql(self.cfg["source_socket_dir"], query, dbname="postgres").stdout)
        clone = json.loads(self.psql(self.cfg["socket_dir"], query, dbname="postgres").stdout)
        changed = sorted(role for role, secret in source.items() if role in clone and clone[role] != secret)
        if changed:
            sql = "".join(
                'ALTER ROLE "{}" PASSWORD {};\n'.format(role.replace('"', '""'), quote(source[role]))
                for role in changed
            )
            self.psql(self.cfg["socket_dir"], sql, dbname="postgres")
        return changed

    def read_base_state(self) -> dict:
        try:
            with open(os.path.join(self.base, STATE_FILE)) as fh:
                return json.load(fh)["source"]
        except (FileNotFoundError, ValueError, KeyError):
            raise Failed(f"{self.base} has no {STATE_FILE}: take a new clone instead") from None

    def prepare_copy(self) -> None:
        """The copy is the standby's data directory as a crash would leave it: make it a standby of nobody."""
        for name in ("postmaster.pid", "postmaster.opts", "recovery.signal"):
            try:
                os.unlink(os.path.join(self.data, name))
            except FileNotFoundError:
                pass
        # replication slots the standby may hold (from a time it was a primary) would keep the clone's WAL
        slots = os.path.join(self.data, "pg_replslot")
        for name in os.listdir(slots) if os.path.isdir(slots) else []:
            shutil.rmtree(os.path.join(slots, name))
        # standby.signal: it starts as a standby, replays its own pg_wal to the end, and is promoted
        open(os.path.join(self.data, "standby.signal"), "a").close()
        os.chown(os.path.join(self.data, "standby.signal"), self.owner.pw_uid, self.owner.pw_gid)
        # ALTER SYSTEM settings copied from operations must not make the clone stream or wait for a standby
        auto = os.path.join(self.data, "postgresql.auto.conf")
        if os.path.exists(auto):
            with open(auto) as fh:
                lines = fh.readlines()
            keep = [
                ln
                for ln in lines
                if not re.match(
                    r"\s*(primary_conninfo|primary_slot_name|synchronous_standby_names|archive_mode|"
                    r"archive_command|restore_command|recovery_target\w*)\s*=",
                    ln,
                )
            ]
            if keep != lines:
                with open(auto, "w") as fh:
                    fh.writelines(keep)

    def verify(self, source: dict) -> dict:
        """Bounded checks: their time depends on the schema, not on the amount of data."""
        res: dict = {}
        sock = self.cfg["socket_dir"]
        limit = int(self.cfg["verify_max_bytes"])
        amcheck = [
            f"{self.bindir}/pg_amcheck",
            "-h",
            sock,
            "-p",
            str(self.cfg["port"]),
            "-d",
            self.cfg["dbname"],
            "--no-strict-names",
            "-j",
            "2",
        ]
        with self.phase("grant"):
            # write rights for validation, in the clone only; amcheck for pg_amcheck (in the clone only)
            sql = "".join(f'GRANT "{role}" TO "{member}";\n' for role, member in self.cfg["grants"])
            proc = self.psql(sock, sql + "CREATE EXTENSION IF NOT EXISTS amcheck;\n", check=False)
        res["grants"] = {
            "ok": proc.returncode == 0,
            "granted": self.cfg["grants"],
            **({"error": proc.stderr.strip()} if proc.returncode else {}),
        }
        # the catalogs' check reads a few hundred MB (the clone's page cache is cold): it runs while the
        # row counts are taken
        t0 = time.monotonic()
        catalogs = (
            self.popen(amcheck + [a for s in self.cfg["amcheck_schemas"] for a in ("-s", s)])
            if self.cfg["amcheck_schemas"]
            else None
        )
        with self.phase("counts"):
            # Row counts per table (a partitioned table as one): exact for tables up to verify_max_bytes,
            # otherwise the planner's estimate (reltuples scaled to the current size), marked so.
            # Partitions are not stat()ed: their last vacuum's or analyse's figures serve.
            sql = f"""
                SELECT pg_is_in_recovery() AS rec, pg_current_wal_lsn() AS cur,
                       -- the timeline of the WAL it writes now (pg_control_checkpoint() names the old
                       -- one until the first checkpoint after the promotion)
                       ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
                           AS tli \\gset
                WITH leaf AS (
                    SELECT c.oid, c.reltuples, c.relpages, c.relispartition AS part,
                           CASE WHEN c.relispartition THEN c.relpages::bigint * 8192
                                ELSE pg_relation_size(c.oid) END AS bytes,
                           CASE WHEN c.relispartition THEN pg_partition_root(c.oid) ELSE c.oid END AS root
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                      AND n.nspname NOT LIKE 'pg\\_%'
                ), tab AS (
                    SELECT root, sum(bytes) AS bytes, bool_or(part) AS partitioned,
                           sum(CASE WHEN reltuples < 0 THEN 0 WHEN part OR relpages = 0 THEN reltuples
                                    ELSE reltuples / relpages * (bytes / 8192) END) AS est
                    FROM leaf GROUP BY root
                )
                SELECT json_build_object(
                    'in_recovery', :'rec'::boolean, 'current_lsn', :'cur', 'timeline', :'tli'::int,
                    'tables', coalesce(json_object_agg(root::regclass::text, json_build_object(
                        'rows', CASE WHEN exact THEN (xpath('/row/n/text()', query_to_xml(
                                    format('SELECT count(*) AS n FROM %s', root::regclass),
                                    false, true, '')))[1]::text::bigint
                                ELSE round(est)::bigint END,
                        'exact', exact, 'bytes', bytes) ORDER BY root::regclass::text), '{{}}'),
                    'small', coalesce(json_agg(root::regclass::text ORDER BY root::regclass::text)
                                      FILTER (WHERE exact), '[]'))
                FROM (SELECT *, NOT partitioned AND bytes <= {limit} AS exact FROM tab) t;
            """
            counts = json.loads(self.psql(sock, sql).stdout.strip().splitlines()[-1])
        res["in_recovery"] = counts["in_recovery"]
        res["timeline"] = counts["timeline"]
        res["lsn"] = self.end_of_recovery_lsn()
        res["counts"] = counts["tables"]
        # the copy holds at least everything the standby had replayed when it was snapshotted
        res["lsn_ok"] = res["lsn"] is not None and lsn_int(res["lsn"]) >= lsn_int(source["replay_lsn"])
        res["replayed_wal_bytes"] = lsn_int(res["lsn"]) - lsn_int(source["redo_lsn"]) if res["lsn"] else None

        # pg_amcheck of the small tables (and their indexes and TOAST), then the catalogs' result
        # one pattern per schema: each -t costs a match against every relation (~0.15 s with 87,000)
        by_schema: dict[str, list[str]] = {}
        for t in counts["small"]:
            schema, _, name = t.rpartition(".")
            by_schema.setdefault(schema or "public", []).append(re.escape(name.strip('"')))
        procs = [catalogs] if catalogs else []
        if by_schema:
            procs.append(
                self.popen(
                    amcheck
                    + [
                        a
                        for schema, names in sorted(by_schema.items())
                        for a in ("-t", f"{self.cfg['dbname']}.{re.escape(schema)}.({'|'.join(names)})")
                    ]
                )
            )
        outputs = [p.communicate(timeout=self.cfg["timeout"]) for p in procs]
        self.timings["amcheck"] = round(time.monotonic() - t0, 3)  # from its start, alongside counts
        res["amcheck"] = {
            "ok": all(p.returncode == 0 for p in procs),
            "schemas": self.cfg["amcheck_schemas"],
            "tables": counts["small"],
            "max_bytes": limit,
            "output": "\n".join((o + e).strip() for o, e in outputs).strip()[-4000:],
        }

        res["ok"] = not res["in_recovery"] and res["lsn_ok"] and res["amcheck"]["ok"] and res["grants"]["ok"]
        return res

    def end_of_recovery_lsn(self) -> str | None:
        """Where the clone's copy of operations ends: the switch point in its newest timeline history file."""
        histories = sorted(glob.glob(os.path.join(self.data, "pg_wal", "*.history")))
        if not histories:
            return None
        with open(histories[-1]) as fh:
            lines = [ln.split() for ln in fh if ln.strip() and not ln.startswith("#")]
        return lines[-1][1] if lines else None

    def destroy(self) -> dict:
        t_start = time.monotonic()
        out: dict = {"action": "destroy", "cluster": self.name}
        state = self.read_state()
        with self.phase("stop"):
            out["stopped"] = self.stop()
        with self.phase("delete"):
            out["deleted"] = self.delete_subvolumes([self.subvol, self.base])
        with self.phase("sync"):
            # the space comes back only once btrfs has cleaned the deleted subvolumes
            self.run(["btrfs", "subvolume", "sync", self.cfg["volume"]])
        out["space"] = self.free_space()
        out["seconds"] = dict(self.timings)
        out["total_s"] = round(time.monotonic() - t_start, 3)
        out["ok"] = True
        with self.phase("record"):
            out["elog"] = self.elog(
                "clone_destroyed",
                (state or {}).get("lsn"),
                out["total_s"],
                True,
                {"deleted": out["deleted"], "free_bytes": out["space"]["free_bytes"]},
            )
        return out

    def status(self) -> dict:
        return {
            "action": "status",
            "cluster": self.name,
            "running": self.running(),
            "clone": self.subvol if self.is_subvolume(self.subvol) else None,
            "base": self.base if self.is_subvolume(self.base) else None,
            "last": self.read_state(),
            "space": self.free_space(),
            "ok": True,
        }


def load_config(path: str | None) -> dict:
    if not path:
        found = sorted(glob.glob(CONFIG_GLOB))
        if len(found) != 1:
            raise Failed(f"give --config: {len(found)} files match {CONFIG_GLOB}")
        path = found[0]
    with open(path) as fh:
        return json.load(fh)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="soc-clone", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help=f"the clone's configuration (default: the one {CONFIG_GLOB})")
    ap.add_argument("action", choices=["take", "reset", "destroy", "status", "sync-passwords"])
    args = ap.parse_args(argv)
    try:
        clone = Clone(load_config(args.config))
        if args.action == "status":
            out = clone.status()
        else:
            with clone.lock():
                if args.action == "destroy":
                    out = clone.destroy()
                elif args.action == "sync-passwords":
                    if not clone.running():
                        raise Failed(f"{clone.name} is not running: nothing to sync (take a clone first)")
                    out = {"cluster": clone.name, "passwords_synced": clone.sync_passwords()}
                else:
                    out = clone.take(reset=args.action == "reset")
    except Refused as exc:
        out = json.loads(str(exc))
        print(json.dumps(out, indent=1))
        print(f"soc-clone: {out['refused']}", file=sys.stderr)
        return EXIT_REFUSED
    except Failed as exc:
        text = str(exc)
        if text.startswith("{"):
            print(text)
            print('soc-clone: the clone did not verify (see "verify")', file=sys.stderr)
        else:
            print(f"soc-clone: {text}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
