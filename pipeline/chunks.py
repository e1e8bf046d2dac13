"""Time-ordered chunks: when a chunk of on-board time is ready to reduce, and its revisions.

The on-board-time axis is cut into fixed chunks (chunk_id = floor(obt / chunk_seconds)). A chunk is
*complete* when the downlink has delivered past its end and no sequence gap of any APID touches it; it is
*due* when complete, or when the lateness deadline has passed (the horizon is lateness_seconds past its
end) with data still missing. The horizon is the on-board time of the newest star packet of the lowest
priority received: the spacecraft sends each priority in generation order and higher priorities first, so
everything generated before it has been sent. Deadlines are measured in on-board time, not wall-clock
time, so a validation replay and operations decide the same way.

An operator can flush: reduce every chunk now, complete or not (the end of a replay or of a mission
phase). A chunk that was reduced before gets a new revision as soon as its ingested packets differ from
those its current revision reduced (reason 'late_data'); the same data twice changes nothing.

Completeness is judged on the data present: with passes arriving in an arbitrary order a chunk can look
complete before a gap next to it becomes visible, and is then reduced earlier than it would be in
downlink order. Every chunk reduced in two arrival orders ends with the same current revision content;
which chunks were reduced early, and the revision history, depend on the order.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import psycopg

from pipeline.db.migrate import settings
from pipeline.instrument import CCD_CROSSING_S, N_AF
from pipeline.telemetry.layout import (
    APID_AUX_ATTITUDE,
    APID_AUX_TIMECORR,
    APID_HK_BIAS,
    APID_HK_POWER,
    APID_HK_THERMAL,
    is_star_apid,
)

SEQ_MODULO = 1 << 14
LOWEST_PRIORITY_APIDS = (0x120, 0x12F)  # star packets of magnitude class 2
END_MARGIN_S = (N_AF + 1) * CCD_CROSSING_S  # a transit's packet is complete after the last AF crossing
# Attitude, time correlation and housekeeping this far around a chunk are part of its input: its last
# transits are observed after its end, and its first windows take the bias of the sample before it.
CONTEXT_APIDS = (APID_AUX_ATTITUDE, APID_AUX_TIMECORR, APID_HK_THERMAL, APID_HK_BIAS, APID_HK_POWER)
CONTEXT_MARGIN_S = 120.0


@dataclass(frozen=True)
class ChunkState:
    chunk_id: int
    n_packets: int
    input_digest: str
    gaps: int
    complete: bool
    deadline_passed: bool
    current_revision: int  # 0: never reduced
    current_digest: str | None

    flushed: bool = False  # the operator asked for every chunk now (soc reduce --flush)

    @property
    def due(self) -> bool:
        if self.current_revision:  # reduced before: any change to its input is late data
            return self.input_digest != self.current_digest
        return self.complete or self.deadline_passed or self.flushed

    @property
    def reason(self) -> str:
        if self.current_revision:
            return "late_data"
        return "complete" if self.complete else "deadline" if self.deadline_passed else "flush"


# A packet's key as the server sends it (int2send, int4send, float8send: big-endian, no padding).
_KEY = np.dtype([("apid", ">i2"), ("seq", ">i4"), ("obt", ">f8")])
# One bytea of keys per APID, in no particular order: the server reads the primary key's index and neither
# sorts (the rows in (apid, obt, seq) order spilled a sort to disk: 1.0 s of the server per read of 790,000
# keys) nor sends a message per row (a COPY: 0.7 s of Python per read); numpy orders them. Bound: a bytea
# holds at most 1 GB, 76 million packets of one APID.
_KEYS_SQL = (
    "SELECT string_agg(int2send(apid) || int4send(seq) || float8send(obt), ''::bytea)"
    " FROM raw_packets GROUP BY apid"
)


def _keys(conn: psycopg.Connection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(apid, seq, obt) of every ingested packet, sorted by (apid, obt, seq).

    Packets of several windows share an on-board time; their sequence counts order them (gap_chunks reads
    consecutive rows). A wrap of the count (16383 -> 0) within one on-board time would still read as a gap."""
    rows = conn.cursor(binary=True).execute(_KEYS_SQL).fetchall()
    rec = np.frombuffer(b"".join(bytes(b) for (b,) in rows), _KEY)
    order = np.lexsort((rec["seq"], rec["obt"], rec["apid"]))
    return (
        rec["apid"][order].astype(np.int64),
        rec["seq"][order].astype(np.int64),
        rec["obt"][order].astype(float),
    )


def chunk_of(obt, chunk_s: float) -> np.ndarray:
    """The chunk an on-board time belongs to: floor(obt / chunk_seconds) (the one definition)."""
    return np.floor(np.asarray(obt, dtype=float) / chunk_s).astype(np.int64)


def horizon(apid: np.ndarray, obt: np.ndarray) -> float:
    """On-board time up to which the downlink has delivered everything that was not lost."""
    low = (apid >= LOWEST_PRIORITY_APIDS[0]) & (apid <= LOWEST_PRIORITY_APIDS[1])
    star = is_star_apid(apid)
    pick = low if low.any() else star
    return float(obt[pick].max()) if pick.any() else -np.inf


def gap_chunks(apid: np.ndarray, seq: np.ndarray, obt: np.ndarray, chunk_s: float) -> dict[int, int]:
    """Chunks touched by a sequence gap: {chunk_id: gaps}. Input sorted by (apid, obt, seq).

    A missing packet lies somewhere between the two packets around the gap, so every chunk from the one
    before the gap to the one after it is touched.
    """
    same = apid[1:] == apid[:-1]
    step = (seq[1:] - seq[:-1]) % SEQ_MODULO
    bad = np.flatnonzero(same & (step != 1))
    out: dict[int, int] = {}
    for i in bad:
        for c in range(int(chunk_of(obt[i], chunk_s)), int(chunk_of(obt[i + 1], chunk_s)) + 1):
            out[c] = out.get(c, 0) + 1
    return out


def digest(apid: np.ndarray, seq: np.ndarray, obt: np.ndarray) -> str:
    """md5 of the sorted packet keys: the identity of a chunk revision's input."""
    order = np.lexsort((obt, seq, apid))
    keys = np.rec.fromarrays([apid[order], seq[order], obt[order]], formats="<i8,<i8,<f8")
    return hashlib.md5(keys.tobytes()).hexdigest()


def chunk_states(conn: psycopg.Connection, flush: bool = False) -> list[ChunkState]:
    """The state of every chunk that has ingested packets (flush: every one is due, complete or not)."""
    return _scan(conn, flush)[2]


def _scan(conn: psycopg.Connection, flush: bool = False) -> tuple[float, float, list[ChunkState]]:
    """(chunk_seconds, horizon, chunk states) from one read of the ingested packets' keys."""
    cfg = settings(conn)
    chunk_s, lateness = float(cfg["chunk_seconds"]), float(cfg["lateness_seconds"])
    apid, seq, obt = _keys(conn)
    if not len(apid):
        return chunk_s, -np.inf, []
    h = horizon(apid, obt)
    gaps = gap_chunks(apid, seq, obt, chunk_s)
    current = {
        c: (r, d)
        for c, r, d in conn.execute("SELECT chunk_id, revision, input_digest FROM current_chunks").fetchall()
    }
    chunk = chunk_of(obt, chunk_s)
    order = np.argsort(chunk, kind="stable")
    bounds = np.flatnonzero(np.diff(chunk[order])) + 1
    ctx = np.flatnonzero(np.isin(apid, CONTEXT_APIDS))
    ctx = ctx[np.argsort(obt[ctx])]
    ctx_obt = obt[ctx]  # once: taking it per chunk cost O(chunks x context packets)
    states = []
    for idx in np.split(order, bounds):
        c = int(chunk[idx[0]])
        end = (c + 1) * chunk_s
        rev, dig = current.get(c, (0, None))
        lo, hi = np.searchsorted(ctx_obt, [c * chunk_s - CONTEXT_MARGIN_S, end + CONTEXT_MARGIN_S])
        around = ctx[lo:hi][chunk[ctx[lo:hi]] != c]
        inp = np.r_[idx, around]
        states.append(ChunkState(
            chunk_id=c, n_packets=len(idx), input_digest=digest(apid[inp], seq[inp], obt[inp]),
            gaps=gaps.get(c, 0), complete=h >= end + END_MARGIN_S and not gaps.get(c, 0),
            deadline_passed=h >= end + lateness, current_revision=rev, current_digest=dig, flushed=flush,
        ))  # fmt: skip
    return chunk_s, h, states


def chunk_packets(conn: psycopg.Connection, chunk_id: int, chunk_s: float) -> list[bytes]:
    """A chunk's input: its ingested packets plus the context packets around it, in time order."""
    rows = conn.cursor(binary=True).execute(  # binary: the packets' bytes as they are, not hex text
        "SELECT packet FROM raw_packets WHERE chunk_id = %(c)s"
        " OR (apid = ANY(%(ctx)s) AND obt >= %(lo)s AND obt < %(hi)s AND chunk_id <> %(c)s)"
        " ORDER BY obt, apid, seq",
        {"c": chunk_id, "ctx": list(CONTEXT_APIDS), "lo": chunk_id * chunk_s - CONTEXT_MARGIN_S,
         "hi": (chunk_id + 1) * chunk_s + CONTEXT_MARGIN_S},
    )  # fmt: skip
    return [bytes(p) for (p,) in rows]


Reducer = Callable[[psycopg.Connection, int, int, list[bytes]], int]


def reduce_due(conn: psycopg.Connection, reducer: Reducer, flush: bool = False) -> list[tuple[int, int, str]]:
    """Reduce every due chunk, each revision in its own transaction -> [(chunk_id, revision, reason)].

    reducer(conn, chunk_id, revision, packets) runs inside the revision's transaction and returns the
    number of transits it wrote; a failure rolls the whole revision back. If the reducer has a method
    committed(conn, chunk_id, revision, input_digest), it is called after the revision's transaction
    commits (to publish what must not exist unless the revision does, such as downstream products); if it
    has a method recover(conn), it is called first (to finish what a reducer stopped after a commit left).
    """
    if not conn.autocommit:
        raise RuntimeError("reduce_due needs an autocommit connection: each revision is its own transaction")
    _recover(conn, reducer)
    chunk_s, h, due = _plan(conn, flush)
    return [r for st in due if (r := _reduce_one(conn, reducer, st, chunk_s, h)) is not None]


def reduce_due_parallel(
    dsn: str, make_reducer: Callable, workers: int, flush: bool = False
) -> list[tuple[int, int, str]]:
    """reduce_due with `workers` chunk revisions reduced at a time (one per database core): one
    ReductionPool's round (see there), its worker processes stopped after it."""
    with ReductionPool(dsn, make_reducer, workers) as pool:
        return pool.reduce_due(flush)


class ReductionPool:
    """Rounds of reduce_due with `workers` chunk revisions reduced at a time, the workers kept between
    rounds: a watcher reduces after every delivery, and a fresh worker (an interpreter importing the science
    stack, connecting and making its reducer) took 1.8-2.0 s of CPU here each time, before its catalogue
    cache (pipeline.simulate.sky.Sky) was warm again.

    This process is one of the workers and starts workers - 1 others (fresh interpreters) the first time a
    round has two due chunks or more: it reduces chunks from the start, while the others are still
    importing, so their start-up costs one core for about a second rather than every core. Chunks are handed
    out one at a time, in due order, to whichever worker is free and started, and never more than `workers`
    consecutive due chunks are in progress (a chunk starts only when every chunk `workers` places before it
    is done): chunks reduced at the same time are neighbours in time, as one worker per chunk in lockstep
    would give, not chunks of the same sky. make_reducer(conn) builds each worker's reducer (a picklable
    top-level callable or partial), once per process. A worker whose connection was lost connects again
    before its next chunk; a round that fails stops the workers (the next round starts new ones). The result
    of a round is in the order of the due chunks, as reduce_due gives it.
    """

    def __init__(self, dsn: str, make_reducer: Callable, workers: int):
        self.dsn, self.make_reducer, self.workers = dsn, make_reducer, workers
        self._reducer: Reducer | None = None  # this process's, built at the first round
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ReductionPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (a next round starts new ones); this process's reducer is made again."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._reducer = None, None

    def reduce_due(self, flush: bool = False) -> list[tuple[int, int, str]]:
        """One round: every chunk due now -> [(chunk_id, revision, reason)]."""
        try:
            return self._round(flush)
        except BaseException:
            self.close()  # workers in an unknown state (a lost server, a failed chunk): new ones next round
            raise

    def _round(self, flush: bool) -> list[tuple[int, int, str]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            if self._reducer is None:
                self._reducer = self.make_reducer(conn)
            reducer = self._reducer
            _recover(conn, reducer)
            chunk_s, h, due = _plan(conn, flush)
            if self.workers <= 1 or len(due) <= 1:
                return [r for st in due if (r := _reduce_one(conn, reducer, st, chunk_s, h)) is not None]
            if self._pool is None:
                ctx = multiprocessing.get_context(
                    "spawn"
                )  # fresh interpreters: no connection shared across a fork
                self._pool = ProcessPoolExecutor(
                    self.workers - 1, mp_context=ctx, initializer=_worker_init,
                    initargs=(self.dsn, self.make_reducer),
                )  # fmt: skip
            pool = self._pool
            plan = _Handout(len(due), self.workers)
            results: dict[int, tuple[int, int, str] | None] = {}
            errors: list[BaseException] = []

            def feed() -> None:  # keeps one other worker busy
                try:
                    pool.submit(_worker_ready).result()  # a chunk never waits for a worker that is starting
                    while (i := plan.take()) is not None:
                        results[i] = pool.submit(_worker_reduce, due[i], chunk_s, h).result()
                        plan.done(i)
                except BaseException as exc:  # reported by the calling thread below
                    plan.stop()
                    errors.append(exc)

            feeders = [threading.Thread(target=feed, daemon=True) for _ in range(self.workers - 1)]
            for t in feeders:
                t.start()
            try:
                while (i := plan.take()) is not None:
                    results[i] = _reduce_one(conn, reducer, due[i], chunk_s, h)
                    plan.done(i)
            finally:
                plan.stop()  # the end, or a failure here: no new chunk for the others either
                for t in feeders:
                    t.join()
            if errors:
                raise errors[0]
            return [r for _, r in sorted(results.items()) if r is not None]


class _Handout:
    """Indices 0..n-1 in order, at most `window` consecutive ones taken and not done at any time."""

    def __init__(self, n: int, window: int):
        self.n, self.window = n, window
        self.next = 0  # the next index to hand out
        self.low = 0  # every index below is done
        self.finished: set[int] = set()
        self.stopped = False
        self.cond = threading.Condition()

    def take(self) -> int | None:
        with self.cond:
            self.cond.wait_for(
                lambda: self.stopped or self.next >= self.n or self.next < self.low + self.window
            )
            if self.stopped or self.next >= self.n:
                return None
            self.next += 1
            return self.next - 1

    def _over(self) -> bool:
        return self.stopped or self.next >= self.n

    def done(self, i: int) -> None:
        with self.cond:
            self.finished.add(i)
            while self.low in self.finished:
                self.finished.discard(self.low)
                self.low += 1
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


_worker: dict = {}


def _worker_init(dsn: str, make_reducer: Callable) -> None:
    conn = psycopg.connect(dsn, autocommit=True)
    _worker.update(dsn=dsn, conn=conn, reducer=make_reducer(conn))


def _worker_ready() -> None:
    """A no-op: returns once a worker process has started (its initializer has run)."""


def _worker_conn() -> psycopg.Connection:
    """The worker's connection, made again when the server went away since its last chunk (a restart, a
    failover): a round-trip per chunk (a chunk's reduction takes a tenth of a second or more)."""
    conn = _worker["conn"]
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        conn.close()
        conn = _worker["conn"] = psycopg.connect(_worker["dsn"], autocommit=True)
    return conn


def _worker_reduce(st: ChunkState, chunk_s: float, h: float):
    return _reduce_one(_worker_conn(), _worker["reducer"], st, chunk_s, h)


def _recover(conn: psycopg.Connection, reducer: Reducer) -> None:
    if hasattr(reducer, "recover"):
        reducer.recover(conn)


def _plan(conn: psycopg.Connection, flush: bool = False) -> tuple[float, float, list[ChunkState]]:
    chunk_s, h, states = _scan(conn, flush)
    return chunk_s, h, [st for st in states if st.due]


def _reduce_one(
    conn, reducer: Reducer, st: ChunkState, chunk_s: float, h: float
) -> tuple[int, int, str] | None:
    """One revision of one chunk, in its own transaction; None if another process reduced it meanwhile."""
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('soc-chunk'), %s::int)", (st.chunk_id % (1 << 31),)
        )
        cur = conn.execute(
            "SELECT revision, input_digest FROM current_chunks WHERE chunk_id = %s", (st.chunk_id,)
        ).fetchone()
        if cur is not None and cur[1] == st.input_digest:
            return None
        revision = (cur[0] if cur else 0) + 1
        reason = "late_data" if cur else st.reason
        packets = chunk_packets(conn, st.chunk_id, chunk_s)
        n_transits = reducer(conn, st.chunk_id, revision, packets)
        conn.execute(
            "INSERT INTO chunks (chunk_id, revision, reason, n_packets, input_digest, horizon_obt, gaps,"
            " n_transits) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (st.chunk_id, revision, reason, st.n_packets, st.input_digest, h, st.gaps, n_transits),
        )
    if hasattr(reducer, "committed"):
        reducer.committed(conn, st.chunk_id, revision, st.input_digest)
    return st.chunk_id, revision, reason
