"""Intake: validate every packet of a delivered pass, de-duplicate, quarantine what is bad, ledger it all.

One delivered file is one transaction: its delivery row, a ledger row for every packet copy received and
for every byte range that is not a valid packet, the quarantined bytes with their reason, and the ingested
packets. A crash mid-file leaves nothing behind and the rerun ingests the whole file; a file ingested
before (same name, same content) is skipped; the same name with other content is refused.

De-duplication key: (APID, sequence count, on-board time). Of several valid copies, the canonical one
(first in (delivery, pass_id, byte_offset) order) is ingested and the others are duplicates, whatever
order the files arrive in: a canonical copy that arrives later demotes the earlier one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from pipeline.chunks import chunk_of
from pipeline.db.migrate import settings
from pipeline.telemetry.decode import decode_pass
from pipeline.telemetry.passfile import read_pass

log = logging.getLogger(__name__)


class IntakeError(RuntimeError):
    pass


@dataclass
class IntakeResult:
    file_name: str
    outcome: str  # ingested | already_ingested
    ingested: int = 0
    duplicate: int = 0
    quarantined: int = 0
    size_ok: bool = True
    checksum_ok: bool = True


_STAGE = """
CREATE TEMP TABLE staged (
    byte_offset bigint, length integer, apid smallint, seq integer, obt double precision,
    reason text, chunk_id bigint, packet bytea
) ON COMMIT DROP
"""

_RESOLVE = """
CREATE TEMP TABLE best ON COMMIT DROP AS
WITH cand AS (
    SELECT s.apid, s.seq, s.obt, %(file)s::text AS file_name, s.byte_offset,
           %(delivery)s::integer AS delivery, %(pass_id)s::text AS pass_id
    FROM staged s WHERE s.reason IS NULL
    UNION ALL
    SELECT l.apid, l.seq, l.obt, l.file_name, l.byte_offset, d.delivery, d.pass_id
    FROM packet_ledger l JOIN deliveries d USING (file_name)
    JOIN (SELECT DISTINCT apid, seq, obt FROM staged WHERE reason IS NULL) k USING (apid, seq, obt)
    WHERE l.status = 'ingested'
)
SELECT DISTINCT ON (apid, seq, obt) apid, seq, obt, file_name, byte_offset
FROM cand ORDER BY apid, seq, obt, delivery, pass_id, byte_offset
"""

_DEMOTE = """
UPDATE packet_ledger l SET status = 'duplicate'
FROM best b
WHERE l.status = 'ingested' AND (l.apid, l.seq, l.obt) = (b.apid, b.seq, b.obt)
  AND (l.file_name, l.byte_offset) <> (b.file_name, b.byte_offset)
"""

_LEDGER = """
INSERT INTO packet_ledger (file_name, byte_offset, length, apid, seq, obt, status, reason, chunk_id)
SELECT %(file)s, s.byte_offset, s.length, s.apid, s.seq, s.obt,
       CASE WHEN s.reason IS NOT NULL THEN 'quarantined'
            WHEN b.file_name IS NOT NULL THEN 'ingested' ELSE 'duplicate' END,
       s.reason, s.chunk_id
FROM staged s LEFT JOIN best b ON b.file_name = %(file)s AND b.byte_offset = s.byte_offset
"""

_QUARANTINE = """
INSERT INTO quarantine (file_name, byte_offset, reason, apid, seq, bytes)
SELECT %(file)s, byte_offset, reason, apid, seq, packet FROM staged WHERE reason IS NOT NULL
"""

_RAW = """
INSERT INTO raw_packets (apid, seq, obt, chunk_id, packet)
SELECT s.apid, s.seq, s.obt, s.chunk_id, s.packet
FROM staged s JOIN best b ON b.file_name = %(file)s AND b.byte_offset = s.byte_offset
ON CONFLICT (apid, seq, obt) DO NOTHING
"""


def ingest_file(conn: psycopg.Connection, path: Path) -> IntakeResult:
    """Ingest one delivered pass file (its JSON sidecar beside it) in one transaction."""
    if not conn.autocommit:
        raise IntakeError("ingest_file needs an autocommit connection: each file is its own transaction")
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.exists():
        raise IntakeError(f"{path}: no such file")
    if not sidecar.exists():
        raise IntakeError(f"{path}: no sidecar {sidecar.name} (a delivery is complete only with its sidecar)")
    started = datetime.now(UTC)
    meta, data, checks = read_pass(path)
    sha = hashlib.sha256(data).hexdigest()
    chunk_s = float(settings(conn)["chunk_seconds"])
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('soc-intake'))")  # one intake writer at a time
        prev = conn.execute("SELECT sha256 FROM deliveries WHERE file_name = %s", (path.name,)).fetchone()
        if prev is not None:
            if prev[0] != sha:
                raise IntakeError(
                    f"{path.name} was ingested before with other content (sha256 {prev[0][:12]}…)"
                )
            _log(conn, path.name, started, "already_ingested", None)
            return IntakeResult(path.name, "already_ingested", size_ok=checks.size_ok,
                                checksum_ok=checks.sha256_ok)  # fmt: skip
        row = {
            "file_name": path.name, "pass_id": meta.pass_id, "station": meta.station,
            "delivery": meta.delivery,
            "byte_count": len(data), "sha256": sha, "declared_bytes": meta.byte_count,
            "declared_sha256": meta.sha256, "declared_packets": meta.packet_count, "size_ok": checks.size_ok,
            "checksum_ok": checks.sha256_ok, "aos_utc": meta.aos_utc, "los_utc": meta.los_utc,
        }  # fmt: skip
        columns = ", ".join(row)
        values = ", ".join(f"%({k})s" for k in row)
        conn.execute(f"INSERT INTO deliveries ({columns}) VALUES ({values})", row)
        counts = _stage(conn, data, chunk_s)
        params = {"file": path.name, "delivery": meta.delivery, "pass_id": meta.pass_id}
        conn.execute(_RESOLVE, params)
        conn.execute(_DEMOTE)
        conn.execute(_LEDGER, params)
        conn.execute(_QUARANTINE, params)
        conn.execute(_RAW, params)
        status = dict(
            conn.execute(
                "SELECT status, count(*) FROM packet_ledger WHERE file_name = %s GROUP BY status",
                (path.name,),
            ).fetchall()
        )
        if sum(status.values()) != counts:
            raise IntakeError(f"{path.name}: ledger holds {sum(status.values())} rows for {counts} staged")
        _log(conn, path.name, started, "ingested", f"{status}")
    res = IntakeResult(path.name, "ingested", status.get("ingested", 0), status.get("duplicate", 0),
                       status.get("quarantined", 0), checks.size_ok, checks.sha256_ok)  # fmt: skip
    log.info("%s: %s", path.name, res)
    return res


def _stage(conn: psycopg.Connection, data: bytes, chunk_s: float) -> int:
    """Decode the file and COPY every packet and every problem into the staging table; return the rows."""
    decoded = decode_pass(data)
    p = decoded.packets
    conn.execute(_STAGE)
    buf = memoryview(data)
    chunk = chunk_of(p["obt"], chunk_s)
    with conn.cursor().copy(
        "COPY staged (byte_offset, length, apid, seq, obt, reason, chunk_id, packet) FROM STDIN"
    ) as copy:
        for off, ln, apid, seq, obt, ch in zip(
            p["offset"].tolist(), p["length"].tolist(), p["apid"].tolist(), p["seq"].tolist(),
            p["obt"].tolist(), chunk.tolist(), strict=True,
        ):  # fmt: skip
            copy.write_row((off, ln, apid, seq, obt, None, ch, buf[off : off + ln]))
        for prob in decoded.problems:
            copy.write_row((prob.offset, prob.length, prob.apid, prob.seq, None, prob.reason, None,
                            buf[prob.offset : prob.offset + prob.length]))  # fmt: skip
    return len(p) + len(decoded.problems)


def _log(conn, file_name: str, started: datetime, outcome: str, detail: str | None) -> None:
    conn.execute(
        "INSERT INTO ingest_log (file_name, started_at, finished_at, outcome, detail)"
        " VALUES (%s, %s, %s, %s, %s)",
        (file_name, started, datetime.now(UTC), outcome, detail),
    )


def pending_files(directory: Path) -> list[Path]:
    """Delivered files in a landing directory: those whose sidecar has arrived, in name order."""
    return sorted(
        p.with_suffix(".tm") for p in Path(directory).glob("*.json") if p.with_suffix(".tm").exists()
    )
