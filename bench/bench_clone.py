"""Benchmark of the validation clone (docs/validation.md): soc-clone take vs pg_basebackup, and the
operations ingest rate while a clone is taken.

Runs as root on the machine of the local Ansible inventory, after `ansible-playbook db.yml` and
`ansible-playbook validation.yml` (from ansible/), with the Main Database's schema in place (it records
in the eLog table). It

  1. grows the Main Database on the primary to each size (default 1 and 10 GB) with tables of its own,
     bench_clone_data_NN (1 GiB each, ~930-byte rows, one transaction each, autovacuum off, analysed),
     then CHECKPOINTs the primary once (setup, so that every size starts from the same WAL distance);
  2. at each size times `soc-clone take` (--takes times; its own phase timings) and one pg_basebackup of
     the replica (streamed WAL, fast restartpoint) into a directory on the same disk, and prints both
     with their ratio;
  3. at the largest size runs a fixed ingest workload on the primary through the synchronous replica
     (pgbench, --clients sessions, each transaction one INSERT of 100 rows of ~200 bytes) for --ingest-s
     seconds without clones, then again taking a clone every --ingest-every seconds, and compares the
     rates of the two runs, and within the second the rate inside the takes with the rate outside them;
     first as fast as it goes (the ingest saturates the machine), then offered at fractions of that rate
     (--loads: pgbench --rate), where it also compares the commit latencies (p50, p99) during the takes
     with those of the run without clones;
  4. drops its tables, removes the base backup, and takes a fresh clone (so that the volume does not keep
     the bench's data in an old snapshot).

Step 3 runs in two layouts (--layouts), side by side: "shared", every process on every CPU, and "split",
as on separate hosts as far as one machine can: the primary (its postmaster, every backend it has and will
fork) and pgbench on the first half of the CPUs, the standby and the clone (soc-clone and the server it
starts) on the other half; the disk stays shared. Shared, the clone's start, WAL replay and verification
take CPU from operations' own primary, which in production runs on a host of its own (the clone runs
beside the standby, on the host of its volume).

Prints figures and plots the ingest runs over time, the takes shaded (--plot, default
var/bench/clone_ingest.png); asserts nothing about time.
Usage: sudo .venv/bin/python bench/bench_clone.py [--sizes 1 10]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

VERSION = "15"
PRIMARY = "/var/run/postgresql/db-primary"
REPLICA_CONF = f"/etc/postgresql/{VERSION}/db-replica"
REPLICA_ADDRESS = "127.0.0.12"
BIN = f"/usr/lib/postgresql/{VERSION}/bin"
DB = "soc"
GIB = 1 << 30
ROWS_PER_GIB = 1_048_576  # ~930-byte rows, 8 to a page (no TOAST, no compression): 1 GiB of heap


def as_postgres(argv, **kw):
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=True, **kw
    )


def sql(query: str, socket: str = PRIMARY, db: str = DB) -> str:
    return as_postgres(
        [f"{BIN}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", socket, "-d", db], input=query
    ).stdout.strip()


def data_tables() -> list[str]:
    out = sql("SELECT relname FROM pg_class WHERE relname ~ '^bench_clone_data_[0-9]+$' AND relkind = 'r'")
    return sorted(out.split()) if out else []


def grow_to(gib: int) -> float:
    """Add 1 GiB tables until the bench data reach gib GiB; returns the database size in GiB."""
    have = data_tables()
    for n in range(len(have), gib):
        t0 = time.monotonic()
        sql(f"""
            BEGIN;
            CREATE TABLE bench_clone_data_{n:02d} (id bigint, payload text) WITH (autovacuum_enabled = false);
            INSERT INTO bench_clone_data_{n:02d}
                SELECT g, repeat(md5(g::text), 28) FROM generate_series(1, {ROWS_PER_GIB}) g;
            COMMIT;
            ANALYZE bench_clone_data_{n:02d};
        """)
        print(f"  bench_clone_data_{n:02d}: 1 GiB in {time.monotonic() - t0:.1f} s", flush=True)
    sql("CHECKPOINT")
    return int(sql("SELECT pg_database_size(current_database())")) / GIB


PIDFILE = "/var/run/postgresql/{version}-{cluster}.pid"
CPUS = sorted(os.sched_getaffinity(0))
# the CPUs of "operations" and of "the standby's host" (layout split); empty: every process on every CPU
LAYOUT: dict[str, list[int]] = {}


def on(role: str) -> list[str]:
    """The argv prefix that runs a command on the CPUs of role (operations, standby) in the layout."""
    return ["taskset", "-c", ",".join(map(str, LAYOUT[role]))] if LAYOUT else []


def pin_cluster(cluster: str, cpus: list[int]) -> None:
    """Pin a running cluster's postmaster and its children (backends it forks later inherit it) to cpus."""
    with open(PIDFILE.format(version=VERSION, cluster=cluster)) as fh:
        postmaster = int(fh.readline())
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    pids = [postmaster, *map(int, children)]
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cpus)
        except ProcessLookupError:  # a backend that just ended
            pass


def split_cores() -> dict[str, list[int]]:
    """Operations (the primary) on the first half of the CPUs, the standby's host (standby, clone) on the
    rest."""
    if len(CPUS) < 2:
        raise SystemExit("the split layout needs two CPUs or more")
    half = len(CPUS) // 2
    layout = {"operations": CPUS[:half], "standby": CPUS[half:]}
    pin_cluster("db-primary", layout["operations"])
    pin_cluster("db-replica", layout["standby"])
    return layout


def unpin() -> None:
    """Every process of both clusters on every CPU again."""
    if LAYOUT:
        for cluster in ("db-primary", "db-replica"):
            pin_cluster(cluster, CPUS)
        LAYOUT.clear()


def take(config: str | None) -> dict:
    argv = on("standby") + ["soc-clone"] + (["--config", config] if config else []) + ["take"]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"soc-clone take failed ({proc.returncode}): {proc.stderr}\n{proc.stdout}")
    out = json.loads(proc.stdout)
    out["wall_s"] = wall
    return out


def basebackup(target_dir: str) -> float:
    dest = os.path.join(target_dir, "base")
    dsn = (
        f"host={REPLICA_ADDRESS} port=5432 user=replicator passfile={REPLICA_CONF}/replication.pgpass "
        f"sslmode=verify-full sslrootcert={REPLICA_CONF}/ca.crt"
    )
    t0 = time.monotonic()
    as_postgres(
        [
            f"{BIN}/pg_basebackup",
            f"--dbname={dsn}",
            f"--pgdata={dest}",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-password",
            "--no-sync",
        ]
    )
    seconds = time.monotonic() - t0
    shutil.rmtree(dest)
    return seconds


def ingest(
    config: str | None, seconds: int, every: int | None, clients: int, tps: float | None = None
) -> tuple[list, list, list]:
    """pgbench's fixed INSERT workload on the primary for `seconds`, as fast as it goes or offered at tps
    transactions a second, a clone taken every `every` seconds meanwhile (None: none) -> (each
    transaction's (end time, latency in ms: from its scheduled start when offered), clone windows, each
    take's phase timings)."""
    sql(
        "CREATE TABLE IF NOT EXISTS bench_clone_ingest (id bigserial, at timestamptz DEFAULT now(), "
        "payload text) WITH (autovacuum_enabled = false)"
    )
    work = tempfile.mkdtemp(prefix="bench-clone-")
    os.chmod(work, 0o777)
    script = os.path.join(work, "ingest.sql")
    with open(script, "w") as fh:
        fh.write(
            "INSERT INTO bench_clone_ingest (payload) SELECT repeat(md5(g::text), 6) "
            "FROM generate_series(1, 100) g;\n"
        )
    windows: list[tuple[float, float]] = []
    phases: list[dict] = []

    def clones():
        time.sleep(every / 2)
        while time.time() < t_end - every / 2:
            t0 = time.time()
            phases.append(take(config)["seconds"])
            windows.append((t0, time.time()))
            time.sleep(max(0.0, every - (time.time() - t0)))

    t_end = time.time() + seconds
    th = threading.Thread(target=clones) if every else None
    if th:
        th.start()
    as_postgres(
        [*on("operations"), f"{BIN}/pgbench", "-n", "-h", PRIMARY, "-c", str(clients), "-T", str(seconds),
         "-f", script, "-l", f"--log-prefix={work}/log", *(["-R", f"{tps:.1f}"] if tps else []), DB],
        cwd=work,
    )  # fmt: skip
    if th:
        th.join()
    ends = []
    for path in glob.glob(f"{work}/log*"):
        with open(path) as fh:
            for line in fh:
                f = line.split()
                # epoch s and us of the transaction's end; its latency in us
                ends.append((int(f[4]) + int(f[5]) / 1e6, int(f[2]) / 1e3))
    shutil.rmtree(work)
    sql("DROP TABLE bench_clone_ingest")
    return sorted(ends), windows, phases


def percentile(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100)[q - 1], 2) if len(values) > 1 else float("nan")


def ingest_with_and_without_clones(
    config: str | None, seconds: int, every: int, clients: int, load: float, capacity_tps: float | None
) -> dict:
    """The same workload twice, without clones and with one every `every` s: the rate over each whole run
    (what operations sees over a day), and within the run with clones, inside the takes vs outside them
    (the worst case: the seconds a take lasts). load 1: as fast as it goes (the ingest saturates the
    machine); below 1: offered at that fraction of capacity_tps, the rate the same workload reached
    without clones (a centre's ingest keeps up with its downlink and has headroom: does it keep up
    during a take, and how much longer do its commits take?)."""
    tps = capacity_tps * load if load < 1 else None
    quiet, _, _ = ingest(config, seconds, None, clients, tps)
    with_clones, windows, phases = ingest(config, seconds, every, clients, tps)
    ends = [e for e, _ in with_clones]
    rate_quiet = len(quiet) / (quiet[-1][0] - quiet[0][0])
    rate_with = len(ends) / (ends[-1] - ends[0])
    # the takes' windows within the span of the transactions (a take may end after the last one)
    windows = [(max(a, ends[0]), min(b, ends[-1])) for a, b in windows if a < ends[-1] and b > ends[0]]
    in_take = [latency for e, latency in with_clones if any(a <= e < b for a, b in windows)]
    inside = len(in_take)
    t_inside = sum(b - a for a, b in windows)
    t_outside = (ends[-1] - ends[0]) - t_inside
    rate_in, rate_out = inside / t_inside, (len(ends) - inside) / t_outside
    return {
        "load": f"{load:.2f} of capacity ({tps:.0f} transactions/s offered)" if tps else "as fast as it goes",
        "tps_no_clones": round(rate_quiet, 1),
        "latency_ms_no_clones_p50_p99": [percentile([lat for _, lat in quiet], q) for q in (50, 99)],
        "latency_ms_during_take_p50_p99": [percentile(in_take, q) for q in (50, 99)],
        "takes": len(windows),
        "seconds_in_takes": round(t_inside, 1),
        "rows_per_s_no_clones": round(rate_quiet * 100),
        "rows_per_s_with_clones": round(rate_with * 100),
        "run_ratio": round(rate_with / rate_quiet, 3),
        "rows_per_s_outside_takes": round(rate_out * 100),
        "rows_per_s_during_take": round(rate_in * 100),
        "take_ratio": round(rate_in / rate_out, 3),
        # where a take's time goes while operations ingests (mean seconds per phase)
        "take_phases_s": {k: round(statistics.mean(p.get(k, 0.0) for p in phases), 3) for k in phases[0]}
        if phases
        else {},
        # for the plot (main drops it before printing): each run's transactions (end, latency ms) and the
        # takes' windows
        "series": {"without": quiet, "with": with_clones, "windows": windows},
    }


def plot_ingest(ingests: list[dict], every: int, path: str) -> None:
    """One row per ingest run pair: rows committed per second and the commit latency per second (median
    and slowest), without clones and with one every `every` s, the takes shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2 * len(ingests), 1, figsize=(10, 4.2 * len(ingests)), sharex=True, squeeze=False
    )
    for i, row in enumerate(ingests):
        series = row["series"]
        rate_ax, lat_ax = axes[2 * i][0], axes[2 * i + 1][0]
        for name, color in (("without", "tab:gray"), ("with", "tab:blue")):
            runs = series[name]
            t0 = runs[0][0]
            per_s: dict[int, list[float]] = {}
            for end, latency in runs:
                per_s.setdefault(int(end - t0), []).append(latency)
            secs = sorted(per_s)[:-1]  # the last second is cut short
            label = "no clones" if name == "without" else f"a clone every {every} s"
            rate_ax.plot(secs, [len(per_s[s]) * 100 for s in secs], color=color, label=label)
            lat_ax.plot(
                secs, [statistics.median(per_s[s]) for s in secs], color=color, label=f"median, {label}"
            )
            lat_ax.plot(
                secs, [max(per_s[s]) for s in secs], color=color, linestyle=":", label=f"slowest, {label}"
            )
            if name == "with":
                for a, b in series["windows"]:
                    for ax in (rate_ax, lat_ax):
                        ax.axvspan(a - t0, b - t0, color="tab:orange", alpha=0.15, lw=0)
                        ax.axvline(a - t0, color="tab:orange", lw=0.8)  # takes may follow each other
        rate_ax.set_title(
            f"{row['load']}: {row['run_ratio']:.2f}x over the run, {row['take_ratio']:.2f}x during takes "
            f"(shaded)",
            fontsize=10,
        )
        rate_ax.set_ylabel("rows committed / s")
        rate_ax.set_ylim(bottom=0)
        rate_ax.legend(loc="lower left", fontsize=8)
        lat_ax.set_yscale("log")
        lat_ax.set_ylabel("commit latency, ms")
        lat_ax.legend(loc="upper left", fontsize=7, ncol=2)
    axes[-1][0].set_xlabel("seconds into the run")
    fig.suptitle("Operations ingest while clones are taken (bench/bench_clone.py)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10], help="GiB of bench data, ascending")
    ap.add_argument("--takes", type=int, default=3, help="clones timed at each size")
    ap.add_argument("--config", help="soc-clone's configuration (default: the one it finds)")
    ap.add_argument("--basebackup-dir", default="/var/tmp", help="where pg_basebackup writes (same disk)")
    ap.add_argument("--ingest-s", type=int, default=60)
    ap.add_argument("--ingest-every", type=int, default=10)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--loads", type=float, nargs="+", default=[1.0, 0.5],
                    help="the ingest: 1 as fast as it goes (always run), below 1 offered at that fraction"
                         " of the rate it reached without clones")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the bench data (no clean-up)")
    ap.add_argument("--plot", default="var/bench/clone_ingest.png",
                    help="the ingest runs over time, with the takes shaded ('' for none)")  # fmt: skip
    ap.add_argument("--layouts", nargs="+", choices=["shared", "split"], default=["shared", "split"],
                    help="the ingest's CPU layouts: shared, or split (the primary and pgbench on half the"
                         " CPUs, the standby and the clone on the other half)")  # fmt: skip
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (soc-clone needs btrfs and pg_ctl as postgres)")
    status = json.loads(
        subprocess.run(
            ["soc-clone", "status"] + (["--config", args.config] if args.config else []),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    space = status["space"]
    print(
        f"volume: {space['free_bytes'] / GIB:.1f} of {space['size_bytes'] / GIB:.1f} GiB free; "
        f"/ : {shutil.disk_usage('/').free / GIB:.1f} GiB free",
        flush=True,
    )
    bb_dir = tempfile.mkdtemp(prefix="bench-clone-bb-", dir=args.basebackup_dir)
    shutil.chown(bb_dir, "postgres", "postgres")
    results = []
    try:
        for gib in args.sizes:
            print(f"growing the Main Database to {gib} GiB of bench data", flush=True)
            size = grow_to(gib)
            takes = [take(args.config) for _ in range(args.takes)]
            ready = statistics.median(t["ready_s"] for t in takes)
            bb = basebackup(bb_dir)
            row = {
                "database_gib": round(size, 2),
                "clone_ready_s": ready,
                "clone_ready_all_s": [t["ready_s"] for t in takes],
                "clone_wall_s": round(statistics.median(t["wall_s"] for t in takes), 3),
                "replayed_wal_bytes": [t["verify"]["replayed_wal_bytes"] for t in takes],
                "phases_s": takes[len(takes) // 2]["seconds"],
                "verified": all(t["ok"] for t in takes),
                "pg_basebackup_s": round(bb, 2),
                "basebackup_over_clone": round(bb / ready, 1),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
        ingests: list[dict] = []
        series: list[dict] = []  # the same with each run's transactions, for the plot
        for name in args.layouts:
            if name == "split":
                LAYOUT.update(split_cores())
            layout = (
                f"split: operations on CPUs {LAYOUT['operations']}, standby and clone on {LAYOUT['standby']}"
                if LAYOUT
                else "shared: every process on every CPU"
            )
            capacity = None  # measured by the first load, as fast as it goes
            for load in sorted({1.0, *args.loads}, reverse=True):
                print(f"ingest for {args.ingest_s} s, a clone every {args.ingest_every} s; {layout}; "
                      f"load {load}", flush=True)  # fmt: skip
                row = ingest_with_and_without_clones(
                    args.config, args.ingest_s, args.ingest_every, args.clients, load, capacity
                )
                capacity = capacity or row["tps_no_clones"]
                series.append({"layout": layout, **row})
                ingests.append({k: v for k, v in series[-1].items() if k != "series"})
                print(json.dumps(ingests[-1]), flush=True)
            unpin()
    finally:
        unpin()
        shutil.rmtree(bb_dir, ignore_errors=True)
        if not args.keep:
            for t in data_tables():
                sql(f"DROP TABLE {t}")
            sql("DROP TABLE IF EXISTS bench_clone_ingest; CHECKPOINT;")
            take(args.config)  # the volume no longer holds the bench's data in the old snapshot
    print("\nsize GiB | clone ready s (median) | pg_basebackup s | ratio")
    for r in results:
        print(
            f"{r['database_gib']:8.2f} | {r['clone_ready_s']:22.3f} | {r['pg_basebackup_s']:15.2f} | "
            f"{r['basebackup_over_clone']:.1f}x"
        )
    if args.plot and series:
        plot_ingest(series, args.ingest_every, args.plot)
    for ingest in ingests:
        print(
            f"ingest, {ingest['layout']}; {ingest['load']}\n"
            f"  over a run with a clone every {args.ingest_every} s / without: {ingest['run_ratio']:.3f} "
            f"({ingest['rows_per_s_with_clones']} vs {ingest['rows_per_s_no_clones']} rows/s)\n"
            f"  during a take / outside the takes: {ingest['take_ratio']:.3f} "
            f"({ingest['rows_per_s_during_take']} vs {ingest['rows_per_s_outside_takes']} rows/s)\n"
            f"  commit latency p50/p99 during a take vs without clones: "
            f"{'/'.join(map(str, ingest['latency_ms_during_take_p50_p99']))} vs "
            f"{'/'.join(map(str, ingest['latency_ms_no_clones_p50_p99']))} ms"
        )


if __name__ == "__main__":
    main()
