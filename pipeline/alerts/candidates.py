"""Alert candidates and their life cycle: list, assess, reject, publish.

    candidate --assess--> assessed --publish--> published
        |                    |
        +------reject--------+-----reject-----> rejected

Every change is one transaction: the candidate's row is locked, the change is checked against FLOW (the
same pairs as alert_status_flow in migration 0008, whose triggers and foreign key refuse anything else
too), the status (and at assessment the class and comment) updated, and a row of alert_transitions
records who did it, when and why. A refused change raises TransitionError naming the candidate and both
states. Publishing also gives the candidate its alert name (pipeline.alerts.names), in the same
transaction; the files are written by pipeline.alerts.publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from pipeline.alerts.names import assign_name
from pipeline.db import one_row

STATUSES = ("candidate", "assessed", "published", "rejected")
FLOW = {
    ("candidate", "assessed"),
    ("candidate", "rejected"),
    ("assessed", "published"),
    ("assessed", "rejected"),
}


class CandidateError(ValueError):
    """A candidate that does not exist, or a request that makes no sense (empty name of who did it)."""


class TransitionError(CandidateError):
    """A change of status the life cycle does not allow."""

    def __init__(self, candidate_id: int, from_status: str, to_status: str):
        allowed = sorted(t for f, t in FLOW if f == from_status)
        super().__init__(
            f"alert candidate {candidate_id}: {from_status} -> {to_status} is not allowed"
            f" (from {from_status}: {', '.join(allowed) or 'nothing, it is final'})"
        )
        self.candidate_id, self.from_status, self.to_status = candidate_id, from_status, to_status


@dataclass(frozen=True)
class Candidate:
    candidate_id: int
    source_id: int
    detector: str
    t_trigger: float  # UTC mission seconds
    run_id: int
    healpix: int
    ra: float
    dec: float
    alert_mag: float
    historic_mag: float | None
    historic_std: float | None
    n_historic: int
    significance: float
    status: str
    alert_class: str
    comment: str
    name: str | None  # once published
    published_at: datetime | None


@dataclass(frozen=True)
class Transition:
    candidate_id: int
    from_status: str  # '' for the creation by a run
    to_status: str
    who: str
    at: datetime
    comment: str


_SELECT = (
    "SELECT c.candidate_id, c.source_id, c.detector, c.t_trigger, c.run_id, c.healpix, c.ra, c.dec,"
    " c.alert_mag, c.historic_mag, c.historic_std, c.n_historic, c.significance, c.status, c.class,"
    " c.comment, n.name, n.assigned_at FROM alert_candidates c"
    " LEFT JOIN alert_names n USING (candidate_id)"
)


def list_candidates(
    conn: psycopg.Connection,
    status: str | None = None,
    detector: str | None = None,
    run_id: int | None = None,
) -> list[Candidate]:
    """Candidates (by id), optionally only those of a status, a detector, a run."""
    if status is not None and status not in STATUSES:
        raise CandidateError(f"unknown status {status!r} (known: {', '.join(STATUSES)})")
    where, args = [], []
    for column, value in (("c.status", status), ("c.detector", detector), ("c.run_id", run_id)):
        if value is not None:
            where.append(f"{column} = %s")
            args.append(value)
    query = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY c.candidate_id"
    return [Candidate(*row) for row in conn.execute(query, args)]


def get_candidate(conn: psycopg.Connection, candidate_id: int) -> Candidate:
    row = conn.execute(_SELECT + " WHERE c.candidate_id = %s", (candidate_id,)).fetchone()
    if row is None:
        raise CandidateError(f"no alert candidate {candidate_id}")
    return Candidate(*row)


def transitions(conn: psycopg.Connection, candidate_id: int) -> list[Transition]:
    """The candidate's history, oldest first."""
    return [
        Transition(*row)
        for row in conn.execute(
            "SELECT candidate_id, from_status, to_status, who, at, comment FROM alert_transitions"
            " WHERE candidate_id = %s ORDER BY transition_id",
            (candidate_id,),
        )
    ]


def _change(
    conn: psycopg.Connection, candidate_id: int, to_status: str, who: str, note: str, columns=None
) -> str:
    """In the caller's transaction: lock, check, update (status and columns), record the transition with
    note. Returns the previous status."""
    columns = columns or {}
    if not who or not who.strip():
        raise CandidateError(f"alert candidate {candidate_id}: say who makes the change (--by)")
    row = conn.execute(
        "SELECT status FROM alert_candidates WHERE candidate_id = %s FOR UPDATE", (candidate_id,)
    ).fetchone()
    if row is None:
        raise CandidateError(f"no alert candidate {candidate_id}")
    (current,) = row
    if (current, to_status) not in FLOW:
        raise TransitionError(candidate_id, current, to_status)
    sets = ", ".join(["status = %s", *(f"{c} = %s" for c in columns)])
    conn.execute(
        f"UPDATE alert_candidates SET {sets} WHERE candidate_id = %s",
        (to_status, *columns.values(), candidate_id),
    )
    conn.execute(
        "INSERT INTO alert_transitions (candidate_id, from_status, to_status, who, comment)"
        " VALUES (%s, %s, %s, %s, %s)",
        (candidate_id, current, to_status, who.strip(), note),
    )
    return current


def assess(
    conn: psycopg.Connection, candidate_id: int, who: str, comment: str = "", alert_class: str | None = None
) -> Candidate:
    """candidate -> assessed. comment (and alert_class, default 'unknown') become the published alert's
    Comment and Class."""
    columns = {"comment": comment}
    if alert_class is not None:
        if not alert_class.strip():
            raise CandidateError(f"alert candidate {candidate_id}: the class must not be empty")
        columns["class"] = alert_class.strip()
    with conn.transaction():
        _change(conn, candidate_id, "assessed", who, comment, columns)
    return get_candidate(conn, candidate_id)


def reject(conn: psycopg.Connection, candidate_id: int, who: str, reason: str) -> Candidate:
    """candidate or assessed -> rejected, with the reason recorded."""
    if not reason or not reason.strip():
        raise CandidateError(f"alert candidate {candidate_id}: give the reason for rejecting it")
    with conn.transaction():
        _change(conn, candidate_id, "rejected", who, reason.strip())
    return get_candidate(conn, candidate_id)


def publish_candidate(conn: psycopg.Connection, candidate_id: int, who: str, comment: str = "") -> str:
    """assessed -> published, and the alert name, in the caller's transaction -> the name. The
    publication time is the transaction's time (now()), the same for every candidate published in it."""
    _change(conn, candidate_id, "published", who, comment)
    (now,) = one_row(conn.execute("SELECT now()"))
    return assign_name(conn, candidate_id, now)


def publish_assessed(conn: psycopg.Connection, who: str) -> list[tuple[int, str]]:
    """Publish every assessed candidate (in candidate order, so names follow it), one transaction ->
    [(candidate_id, name)]."""
    with conn.transaction():
        ids = [
            cid
            for (cid,) in conn.execute(
                "SELECT candidate_id FROM alert_candidates WHERE status = 'assessed'"
                " ORDER BY candidate_id FOR UPDATE"
            )
        ]
        return [(cid, publish_candidate(conn, cid, who)) for cid in ids]
