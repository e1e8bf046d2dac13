"""One alerts run: the chunk revisions not yet scanned -> scan -> evaluate -> candidates, recorded.

1. New data: the chunk revisions loaded (`transit_chunks`, read where the scan reads: the replica when
   configured, so that every revision taken is visible to the scan) that no run has scanned
   (`alert_run_chunks`, on the primary). A chunk re-reduced into a new revision is new again. Nothing
   new: the run says so and records nothing.
2. Planning: per revision, the sources it brought transits of, grouped by pixel (`scan.new_sources_by_pixel`).
3. Scan (`scan.scan`): per pixel one query and `evaluate`, in a pool of workers.
4. Storing, in ONE transaction on the primary: the run (counts by detector and by filter, thresholds,
   software version), the revisions it scanned, and the verdicts no filter rejected as candidates, each
   with its creation transition. A verdict is not stored again when its candidate exists (same source,
   detector and triggering transit: a revision scanned again) or when the source has a candidate of that
   detector that is open or published (the same event seen at the next visit); the run counts both.

A run that fails or is killed before step 4 commits leaves nothing: the next run takes the same revisions
(and any newer) and finishes the job. Two runs at once: the second is refused (a session advisory lock on
the primary), so a revision is never scanned by two runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import psycopg

from pipeline import __version__
from pipeline.alerts.detect import DETECTORS
from pipeline.alerts.filters import FILTER_NAMES
from pipeline.alerts.scan import RunContext, ScanResult, default_workers, new_sources_by_pixel, scan
from pipeline.alerts.thresholds import Thresholds, load_thresholds
from pipeline.db import one_row
from pipeline.db.load import healpix_order

RUN_LOCK = "hashtext('soc-alerts-run')"
CREATED_BY = "soc alerts run"


class AlertsRunError(RuntimeError, ValueError):
    """A run that cannot start or cannot be stored (also a ValueError: `soc` prints it as an error)."""


@dataclass
class RunReport:
    """What a run did (also what `soc alerts run` prints)."""

    run_id: int | None  # None: nothing new, nothing recorded
    revisions: list[tuple[int, int]] = field(default_factory=list)
    pixels: int = 0
    sources: int = 0
    transits: int = 0
    queries: int = 0
    n_verdicts: int = 0
    n_candidates: int = 0
    n_candidates_new: int = 0
    by_detector: dict = field(default_factory=dict)
    by_filter: dict = field(default_factory=dict)
    workers: int = 0
    scan: str = "pixel"
    seconds: float = 0.0
    scan_seconds: float = 0.0

    @property
    def message(self) -> str:
        if self.run_id is None:
            return "nothing new to scan: every loaded chunk revision has been scanned"
        return (
            f"alerts run {self.run_id}: {len(self.revisions)} chunk revision(s), {self.pixels} pixel(s),"
            f" {self.sources:,} source(s), {self.n_verdicts} verdict(s), {self.n_candidates} passed the"
            f" filters, {self.n_candidates_new} new candidate(s)"
        )


def pending_revisions(write_conn: psycopg.Connection, read_conn: psycopg.Connection) -> list[tuple]:
    """(chunk_id, revision, pixels) loaded (as the reading server sees it) and not yet scanned."""
    loaded = read_conn.execute(
        "SELECT chunk_id, revision, pixels FROM transit_chunks ORDER BY chunk_id"
    ).fetchall()
    scanned = set(write_conn.execute("SELECT chunk_id, revision FROM alert_run_chunks").fetchall())
    return [(c, r, p) for c, r, p in loaded if (c, r) not in scanned]


def run_alerts(
    write_dsn: str,
    read_dsn: str | None = None,
    *,
    workers: int | None = None,
    per_source: bool = False,
    thresholds: Thresholds | None = None,
    on_start: Callable[[int], None] | None = None,
    on_pixel: Callable | None = None,
) -> RunReport:
    """One alerts run (see the module docstring). read_dsn: where the scan reads (default: write_dsn).
    workers: scan workers (default: the database server's cores, else this machine's). on_start(n_pixels)
    and on_pixel(result) report progress."""
    th = thresholds or load_thresholds()
    read_dsn = read_dsn or write_dsn
    t_start = time.perf_counter()
    with psycopg.connect(write_dsn, autocommit=True) as wconn:
        if not one_row(wconn.execute(f"SELECT pg_try_advisory_lock({RUN_LOCK})"))[0]:
            raise AlertsRunError("another alerts run is in progress on this database (advisory lock held)")
        try:
            (started_at,) = one_row(wconn.execute("SELECT clock_timestamp()"))
            with psycopg.connect(read_dsn, autocommit=True) as rconn:
                pending = pending_revisions(wconn, rconn)
                if not pending:
                    return RunReport(run_id=None, seconds=time.perf_counter() - t_start)
                order = healpix_order(rconn)
                work = new_sources_by_pixel(rconn, pending)
                n_workers = workers or default_workers(rconn)
            ctx = RunContext(tuple((c, r) for c, r, _ in pending), th, order)
            if on_start is not None:
                on_start(len(work))
            t_scan = time.perf_counter()
            result = scan(read_dsn, ctx, work, n_workers, per_source, on_pixel)
            scan_s = time.perf_counter() - t_scan
            report = _store(wconn, started_at, pending, result, th, per_source)
            report.scan_seconds = scan_s
            report.seconds = time.perf_counter() - t_start
            return report
        finally:
            with contextlib.suppress(psycopg.Error):  # a lost connection has released it already
                wconn.execute(f"SELECT pg_advisory_unlock({RUN_LOCK})")


def verdict_counts(result: ScanResult) -> tuple[dict, dict]:
    """({detector: {"raised": n, "candidates": n}}, {filter: n}) of a scan's verdicts."""
    v = result.verdicts
    ok = v.rejected_by == ""
    by_detector = {
        d: {"raised": int((v.detector == d).sum()), "candidates": int(((v.detector == d) & ok).sum())}
        for d in DETECTORS
    }
    counts = Counter(name for r in v.rejected_by if r for name in str(r).split(","))
    by_filter = {name: int(counts.get(name, 0)) for name in FILTER_NAMES}
    by_filter.update({k: int(n) for k, n in counts.items() if k not in by_filter})  # a filter added later
    return by_detector, by_filter


def _json(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {x!r}")


def _store(wconn, started_at, pending, result: ScanResult, th: Thresholds, per_source: bool) -> RunReport:
    """The run, its revisions and its new candidates, in one transaction."""
    v = result.verdicts
    ok = np.flatnonzero(v.rejected_by == "")
    by_detector, by_filter = verdict_counts(result)
    cand = {
        "source_id": v.source_id[ok].astype(np.int64).tolist(),
        "detector": [str(d) for d in v.detector[ok]],
        "t": v.t_trigger[ok].astype(float).tolist(),
    }
    with wconn.transaction():
        # which candidates are new: neither the same trigger nor an open or published one of the source
        fresh = [
            i - 1
            for (i,) in wconn.execute(
                "SELECT v.i FROM unnest(%(source_id)s::bigint[], %(detector)s::text[], %(t)s::float8[])"
                " WITH ORDINALITY AS v (source_id, detector, t, i)"
                " WHERE NOT EXISTS (SELECT 1 FROM alert_candidates c WHERE c.source_id = v.source_id"
                "   AND c.detector = v.detector AND (c.t_trigger = v.t OR c.status <> 'rejected'))"
                " ORDER BY v.i",
                cand,
            )
        ]
        for d in DETECTORS:
            by_detector[d]["stored"] = sum(1 for i in fresh if cand["detector"][i] == d)
        (run_id,) = wconn.execute(
            "INSERT INTO alert_runs (started_at, finished_at, n_chunk_revisions, pixels_scanned,"
            " sources_examined, transits_read, n_verdicts, n_candidates, n_candidates_new,"
            " verdicts_by_detector, rejected_by_filter, thresholds, scan, workers, software_version)"
            " VALUES (%s, clock_timestamp(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " RETURNING run_id",
            (started_at, len(pending), len(result.pixels), result.n_sources, result.n_transits, len(v),
             len(ok), len(fresh), json.dumps(by_detector, sort_keys=True),
             json.dumps(by_filter, sort_keys=True), json.dumps(th.as_dict(), default=_json, sort_keys=True),
             "source" if per_source else "pixel", result.workers, __version__),
        ).fetchone()  # fmt: skip
        wconn.execute(
            "INSERT INTO alert_run_chunks (chunk_id, revision, run_id)"
            " SELECT c, r, %s FROM unnest(%s::bigint[], %s::integer[]) AS x (c, r)",
            (run_id, [c for c, _, _ in pending], [r for _, r, _ in pending]),
        )
        if fresh:
            k = ok[fresh]
            rows = {
                "source_id": v.source_id[k].astype(np.int64).tolist(),
                "detector": [str(d) for d in v.detector[k]],
                "t": v.t_trigger[k].astype(float).tolist(),
                "healpix": result.healpix[k].astype(int).tolist(),
                "ra": result.ra[k].astype(float).tolist(),
                "dec": result.dec[k].astype(float).tolist(),
                "alert_mag": v.alert_mag[k].astype(float).tolist(),
                "historic_mag": _nullable(v.historic_mag[k]),
                "historic_std": _nullable(v.historic_std[k]),
                "n_historic": v.n_historic[k].astype(int).tolist(),
                "significance": v.significance[k].astype(float).tolist(),
                "run_id": run_id,
            }
            ids = [
                cid
                for (cid,) in wconn.execute(
                    "INSERT INTO alert_candidates (source_id, detector, t_trigger, run_id, healpix, ra, dec,"
                    " alert_mag, historic_mag, historic_std, n_historic, significance)"
                    " SELECT source_id, detector, t, %(run_id)s, healpix, ra, dec, alert_mag, historic_mag,"
                    "   historic_std, n_historic, significance"
                    " FROM unnest(%(source_id)s::bigint[], %(detector)s::text[], %(t)s::float8[],"
                    "   %(healpix)s::integer[], %(ra)s::float8[], %(dec)s::float8[], %(alert_mag)s::float8[],"
                    "   %(historic_mag)s::float8[], %(historic_std)s::float8[], %(n_historic)s::integer[],"
                    "   %(significance)s::float8[])"
                    " AS v (source_id, detector, t, healpix, ra, dec, alert_mag, historic_mag, historic_std,"
                    "   n_historic, significance)"
                    " ORDER BY source_id, detector, t RETURNING candidate_id",
                    rows,
                )
            ]
            wconn.execute(
                "INSERT INTO alert_transitions (candidate_id, from_status, to_status, who, comment)"
                " SELECT id, '', 'candidate', %s, %s FROM unnest(%s::bigint[]) AS x (id)",
                (CREATED_BY, f"raised by alerts run {run_id}", ids),
            )
    return RunReport(
        run_id=run_id, revisions=[(c, r) for c, r, _ in pending], pixels=len(result.pixels),
        sources=result.n_sources, transits=result.n_transits, queries=result.n_queries, n_verdicts=len(v),
        n_candidates=len(ok), n_candidates_new=len(fresh), by_detector=by_detector, by_filter=by_filter,
        workers=result.workers, scan="source" if per_source else "pixel",
    )  # fmt: skip


def _nullable(a: np.ndarray) -> list:
    return [float(x) if math.isfinite(x) else None for x in np.asarray(a, dtype=float)]
