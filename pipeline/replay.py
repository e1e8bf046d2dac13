"""Replaying telemetry through a deployed environment: wait until its database has taken every delivery.

The environment's services (the landing tee, `soc ingest --watch landing --reduce`) do the work; this only
watches the database the environment writes to: every named delivery recorded, and no chunk due.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from pipeline.chunks import chunk_states
from pipeline.db import one_row


class ReplayTimeout(TimeoutError):
    pass


@dataclass(frozen=True)
class Processed:
    deliveries: int  # of the named ones, recorded in the database
    due: int  # chunks still waiting for a reduction (-1: not looked at)
    revisions: int  # chunk revisions in the database

    def done(self, expected: int) -> bool:
        return self.deliveries == expected and self.due == 0


def processed(conn: psycopg.Connection, names: list[str], settled_at: int | None = None) -> Processed:
    """How far the environment is with the named deliveries. Whether a chunk is due takes a read of every
    ingested packet's key (pipeline.chunks), so it is looked at only once every delivery is in and, when
    settled_at is given, only while the number of chunk revisions is still settled_at (no reduction ended
    since the previous look); otherwise due is -1 (not known)."""
    (n,) = one_row(conn.execute("SELECT count(*) FROM deliveries WHERE file_name = ANY(%s)", (names,)))
    (revs,) = one_row(conn.execute("SELECT count(*) FROM chunks"))
    settled = settled_at is None or revs == settled_at
    due = sum(st.due for st in chunk_states(conn)) if n == len(names) and settled else -1
    return Processed(int(n), due, int(revs))


def wait_processed(
    dsn: str, names: list[str], timeout: float, interval: float = 2.0, on_poll=None
) -> Processed:
    """Poll until the named deliveries are ingested and no chunk is due; ReplayTimeout after timeout s.

    While the environment's reducers are at work (chunk revisions are still being added), the polls only
    count: the full look at whether chunks are due waits for a poll that finds the count unchanged, so
    waiting costs the environment a few reads of its packets' keys, not one per poll."""
    deadline = time.monotonic() + timeout
    state, error = Processed(0, -1, 0), None
    settled_at: int | None = None  # the first poll looks in full (an environment done already: at once)
    while True:
        last_poll = time.monotonic() >= deadline
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                # the last poll looks in full, whatever the count did: the timeout's message tells what is due
                state, error = processed(conn, names, None if last_poll else settled_at), None
        except psycopg.OperationalError as exc:  # a server starting, restarting or failing over: wait on
            error = exc
        if on_poll:
            on_poll(state)
        if error is None and state.done(len(names)):
            return state
        if last_poll:
            raise ReplayTimeout(
                f"after {timeout:.0f} s: {state.deliveries} of {len(names)} deliveries ingested,"
                f" {max(state.due, 0)} chunk(s) still due" + (f"; the database: {error}" if error else "")
            )
        settled_at = state.revisions if error is None else -1
        time.sleep(interval)
