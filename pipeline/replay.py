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
    due: int  # chunks still waiting for a reduction
    revisions: int  # chunk revisions in the database

    def done(self, expected: int) -> bool:
        return self.deliveries == expected and self.due == 0


def processed(conn: psycopg.Connection, names: list[str]) -> Processed:
    (n,) = one_row(conn.execute("SELECT count(*) FROM deliveries WHERE file_name = ANY(%s)", (names,)))
    due = sum(st.due for st in chunk_states(conn)) if n == len(names) else -1
    (revs,) = one_row(conn.execute("SELECT count(*) FROM chunks"))
    return Processed(int(n), due, int(revs))


def wait_processed(
    dsn: str, names: list[str], timeout: float, interval: float = 2.0, on_poll=None
) -> Processed:
    """Poll until the named deliveries are ingested and no chunk is due; ReplayTimeout after timeout s."""
    deadline = time.monotonic() + timeout
    state, error = Processed(0, -1, 0), None
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                state, error = processed(conn, names), None
        except psycopg.OperationalError as exc:  # a server starting, restarting or failing over: wait on
            error = exc
        if on_poll:
            on_poll(state)
        if error is None and state.done(len(names)):
            return state
        if time.monotonic() >= deadline:
            raise ReplayTimeout(
                f"after {timeout:.0f} s: {state.deliveries} of {len(names)} deliveries ingested,"
                f" {max(state.due, 0)} chunk(s) still due" + (f"; the database: {error}" if error else "")
            )
        time.sleep(interval)
