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

import numpy as np
import psycopg

from pipeline.chunks import chunk_of
from pipeline.db import one_row
from pipeline.db.load import COPY_HEADER, COPY_TRAILER, Column, copy_binary
from pipeline.db.migrate import settings
from pipeline.telemetry.decode import decode_pass
from pipeline.telemetry.passfile import list_passes, read_pass

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


# The valid packets' keys, for the look-ups below (the rows themselves are copied to their tables directly).
_STAGE = """
CREATE TEMP TABLE staged (byte_offset bigint, apid smallint, seq integer, obt double precision) ON COMMIT DROP
"""
STAGE_COLUMNS = (Column("byte_offset", "bigint"), Column("apid", "smallint"), Column("seq", "integer"),
                 Column("obt", "double precision"))  # fmt: skip

# Ingested copies, from earlier files, of the keys the file holds: without any (a new pass), each key's
# canonical copy is its first one in the file and nothing is demoted.
_PRIOR = """
SELECT count(*) FROM packet_ledger l
WHERE l.status = 'ingested'
  AND EXISTS (SELECT 1 FROM staged s WHERE (s.apid, s.seq, s.obt) = (l.apid, l.seq, l.obt))
"""

_RESOLVE = """
CREATE TEMP TABLE best ON COMMIT DROP AS
WITH cand AS (
    SELECT s.apid, s.seq, s.obt, %(file)s::text AS file_name, s.byte_offset,
           %(delivery)s::integer AS delivery, %(pass_id)s::text AS pass_id
    FROM staged s
    UNION ALL
    SELECT l.apid, l.seq, l.obt, l.file_name, l.byte_offset, d.delivery, d.pass_id
    FROM packet_ledger l JOIN deliveries d USING (file_name)
    JOIN (SELECT DISTINCT apid, seq, obt FROM staged) k USING (apid, seq, obt)
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

# Copies of the file whose key raw_packets already holds (an earlier copy, now demoted, was ingested first):
# raw_packets keeps that row, as INSERT ... ON CONFLICT DO NOTHING would.
_IN_RAW = """
SELECT s.byte_offset FROM staged s
WHERE EXISTS (SELECT 1 FROM raw_packets r WHERE (r.apid, r.seq, r.obt) = (s.apid, s.seq, s.obt))
"""

LEDGER_COLUMNS = (
    Column("file_name", "text"), Column("byte_offset", "bigint"), Column("length", "integer"),
    Column("apid", "smallint", True), Column("seq", "integer", True), Column("obt", "double precision", True),
    Column("status", "text"), Column("reason", "text", True), Column("chunk_id", "bigint", True),
)  # fmt: skip

# COPY BINARY tuple of raw_packets without its packet bytes: field count, then (length, value) of apid,
# seq, obt and chunk_id, then the length of the packet (bytea), whose bytes follow.
_RAW_TUPLE = np.dtype([
    ("nf", ">i2"), ("l0", ">i4"), ("apid", ">i2"), ("l1", ">i4"), ("seq", ">i4"), ("l2", ">i4"),
    ("obt", ">f8"), ("l3", ">i4"), ("chunk_id", ">i8"), ("l4", ">i4"),
])  # fmt: skip
_RAW_BLOCK = 1 << 13  # rows per Copy.write


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
        params = {"file": path.name, "delivery": meta.delivery, "pass_id": meta.pass_id}
        counts = _ingest_rows(conn, data, chunk_s, params)
        status: dict[str, int] = dict(
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


def _ingest_rows(conn: psycopg.Connection, data: bytes, chunk_s: float, params: dict) -> int:
    """Decode the file; write its ledger rows, quarantined bytes and canonical packets; return ledger rows.

    The valid packets' keys go to a staging table for the two look-ups against earlier files (their
    ingested copies of the same keys, and the keys raw_packets already holds); the ledger, quarantine and
    raw_packets rows are then copied in directly (binary COPY) with the status decided here.
    """
    decoded = decode_pass(data, samples=False)  # the judgement of every packet, not its windows
    p = decoded.packets
    probs = decoded.problems
    offset = p["offset"].astype(np.int64)
    apid, seq, obt = p["apid"].astype(np.int16), p["seq"].astype(np.int32), p["obt"].astype(float)
    conn.execute(_STAGE)
    copy_binary(conn, "staged", STAGE_COLUMNS, {"byte_offset": offset, "apid": apid, "seq": seq, "obt": obt})
    conn.execute("ANALYZE staged")
    if one_row(conn.execute(_PRIOR))[0] == 0:
        # a new pass: every key's canonical copy is its first in the file (same delivery and pass id)
        order = np.lexsort((offset, obt, seq, apid))
        first = np.ones(len(order), bool)
        k = (apid[order], seq[order], obt[order])
        first[1:] = (k[0][1:] != k[0][:-1]) | (k[1][1:] != k[1][:-1]) | (k[2][1:] != k[2][:-1])
        best = np.zeros(len(order), bool)
        best[order[first]] = True
    else:  # copies of these keys were ingested before: the canonical one may be there, or here
        conn.execute(_RESOLVE, params)
        conn.execute(_DEMOTE)
        rows = conn.execute("SELECT byte_offset FROM best WHERE file_name = %(file)s", params).fetchall()
        best = np.isin(offset, np.array([r[0] for r in rows], dtype=np.int64))
    in_raw = [r[0] for r in conn.execute(_IN_RAW).fetchall()]
    new_raw = best & ~np.isin(offset, np.array(in_raw, dtype=np.int64))
    chunk = chunk_of(obt, chunk_s)

    # the ledger: every packet copy, then every problem
    n, m = len(p), len(probs)
    name = np.full(n + m, params["file"].encode(), dtype=f"S{max(len(params['file'].encode()), 1)}")
    none = np.zeros(n, bool)
    ledger = {
        "file_name": name,
        "byte_offset": np.r_[offset, [q.offset for q in probs]].astype(np.int64),
        "length": np.r_[p["length"], [q.length for q in probs]].astype(np.int32),
        "apid": _nullable([*apid.tolist(), *(q.apid for q in probs)], np.int16),
        "seq": _nullable([*seq.tolist(), *(q.seq for q in probs)], np.int32),
        "obt": np.r_[obt, np.full(m, np.nan)],
        "status": np.r_[np.where(best, b"ingested", b"duplicate"), np.full(m, b"quarantined")].astype("S11"),
        "reason": np.ma.MaskedArray(
            np.array([b""] * n + [q.reason.encode() for q in probs], dtype=bytes),
            np.r_[~none, np.zeros(m, bool)],
        ),
        "chunk_id": np.ma.MaskedArray(np.r_[chunk, np.zeros(m, np.int64)], np.r_[none, np.ones(m, bool)]),
    }
    copy_binary(conn, "packet_ledger", LEDGER_COLUMNS, ledger)
    if probs:
        buf = memoryview(data)
        with conn.cursor().copy(
            "COPY quarantine (file_name, byte_offset, reason, apid, seq, bytes) FROM STDIN"
        ) as copy:
            for q in probs:
                copy.write_row((params["file"], q.offset, q.reason, q.apid, q.seq,
                                buf[q.offset : q.offset + q.length]))  # fmt: skip
    idx = np.flatnonzero(new_raw)
    _copy_raw(conn, data, offset[idx], p["length"][idx].astype(np.int64), apid[idx], seq[idx], obt[idx],
              chunk[idx])  # fmt: skip
    return n + m


def _nullable(values: list, dtype) -> np.ma.MaskedArray:
    null = np.array([v is None for v in values], dtype=bool)
    return np.ma.MaskedArray(np.array([0 if v is None else v for v in values], dtype=dtype), null)


def _copy_raw(conn, data: bytes, offset, length, apid, seq, obt, chunk) -> None:
    """Binary COPY of packets (their bytes from data at offset, length) into raw_packets."""
    rec = np.zeros(len(offset), _RAW_TUPLE)
    rec["nf"] = 5
    rec["l0"], rec["l1"], rec["l2"], rec["l3"] = 2, 4, 8, 8
    rec["apid"], rec["seq"], rec["obt"], rec["chunk_id"], rec["l4"] = apid, seq, obt, chunk, length
    head = rec.view(np.uint8).data
    size = _RAW_TUPLE.itemsize
    buf = memoryview(data)
    with conn.cursor().copy(
        "COPY raw_packets (apid, seq, obt, chunk_id, packet) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.write(COPY_HEADER)
        offs, lens = offset.tolist(), length.tolist()
        for a in range(0, len(offs), _RAW_BLOCK):
            parts = []
            for i in range(a, min(a + _RAW_BLOCK, len(offs))):
                parts.append(head[i * size : (i + 1) * size])
                parts.append(buf[offs[i] : offs[i] + lens[i]])
            copy.write(b"".join(parts))
        copy.write(COPY_TRAILER)


def _log(conn, file_name: str, started: datetime, outcome: str, detail: str | None) -> None:
    conn.execute(
        "INSERT INTO ingest_log (file_name, started_at, finished_at, outcome, detail)"
        " VALUES (%s, %s, %s, %s, %s)",
        (file_name, started, datetime.now(UTC), outcome, detail),
    )


def pending_files(directory: Path, order: str = "name") -> list[Path]:
    """Delivered files in a landing directory: those whose sidecar has arrived (list_passes), in name
    order or, with order="arrival", in the order they arrived (how the ingest watcher takes them)."""
    return list_passes(directory, order)
