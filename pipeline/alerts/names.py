"""Alert names in the Gaia scheme: `Gaia` + two-digit year + letters (Gaia16aye, Gaia18drz, ...).

The letters count the alerts of a year in order of publication: aaa, aab, ..., aaz, aba, ..., zzz, then
aaaa, aaab, ... (three letters first, one more letter whenever a length is used up). The real index
(`../shared/data/gaia-alerts/alerts.csv`) is sorted by (year, length of the letters, letters), the order
its README gives, and within each year its names run aaa, aab, ... without a gap from 2015 on (the busiest
year, 2020, reaches fxy: 4,003 alerts, so the index itself never shows the fourth letter). The year is that
of publication: in the real index every name's year is its `Published` year, while 398 alerts published in
January 2024 have a 2023 `Date` (the triggering transit) and a Gaia24 name.

`letters`/`seq_of` are the pure numbering; `assign_name` gives a published candidate its name in the
caller's transaction, once: a candidate that has a name keeps it, and a name is never reused, because
alert_names only grows (migration 0008 refuses UPDATE, DELETE and TRUNCATE on it) and the next number of a
year is one past the largest ever given.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import psycopg

from pipeline.db import one_row

PREFIX = "Gaia"
MIN_LETTERS = 3
_NAME = re.compile(rf"^{PREFIX}(\d{{2}})([a-z]{{{MIN_LETTERS},}})$")
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('soc-alert-names'))"


class AlertNameError(ValueError):
    """A string that is not an alert name of the Gaia scheme, or a number with no name."""


def letters(seq: int) -> str:
    """The letters of the seq-th alert of a year (0 -> 'aaa', 17575 -> 'zzz', 17576 -> 'aaaa')."""
    if seq < 0:
        raise AlertNameError(f"alert number must be >= 0, not {seq}")
    width = MIN_LETTERS
    while seq >= 26**width:
        seq -= 26**width
        width += 1
    out = []
    for _ in range(width):
        seq, digit = divmod(seq, 26)
        out.append(chr(ord("a") + digit))
    return "".join(reversed(out))


def seq_of(text: str) -> int:
    """The inverse of letters(): 'aaa' -> 0, 'aaz' -> 25, 'aba' -> 26, 'aaaa' -> 17576."""
    if len(text) < MIN_LETTERS or not re.fullmatch(r"[a-z]+", text):
        raise AlertNameError(f"{text!r} is not the letter part of an alert name (>= 3 letters a-z)")
    shorter = sum(26**w for w in range(MIN_LETTERS, len(text)))  # every name with fewer letters
    number = 0
    for ch in text:
        number = number * 26 + ord(ch) - ord("a")
    return shorter + number


def alert_name(year: int, seq: int) -> str:
    """Gaia + two-digit year + letters, e.g. alert_name(16, 628) == 'Gaia16aye'."""
    return f"{PREFIX}{year % 100:02d}{letters(seq)}"


def parse_name(name: str) -> tuple[int, int]:
    """'Gaia16aye' -> (16, 628); AlertNameError for anything else."""
    m = _NAME.match(name)
    if not m:
        raise AlertNameError(f"{name!r} is not an alert name (Gaia + 2-digit year + >= 3 letters a-z)")
    return int(m.group(1)), seq_of(m.group(2))


def sort_key(name: str) -> tuple[int, int, str]:
    """The alert order of the real index: (year, length of the letters, letters)."""
    year, _ = parse_name(name)
    tail = name[len(PREFIX) + 2 :]
    return year, len(tail), tail


def assign_name(conn: psycopg.Connection, candidate_id: int, published_at: datetime) -> str:
    """The candidate's alert name: the one it has, else the next of the year of published_at, recorded
    with published_at. Runs in the caller's transaction (an advisory lock serialises the numbering, so two
    publications at once cannot take the same number)."""
    conn.execute(_LOCK)
    row = conn.execute("SELECT name FROM alert_names WHERE candidate_id = %s", (candidate_id,)).fetchone()
    if row:
        return row[0]
    year = published_at.astimezone(UTC).year % 100
    (nxt,) = one_row(
        conn.execute("SELECT coalesce(max(seq) + 1, 0) FROM alert_names WHERE year = %s", (year,))
    )
    name = alert_name(year, nxt)
    conn.execute(
        "INSERT INTO alert_names (name, candidate_id, year, seq, assigned_at) VALUES (%s, %s, %s, %s, %s)",
        (name, candidate_id, year, nxt, published_at),
    )
    return name
