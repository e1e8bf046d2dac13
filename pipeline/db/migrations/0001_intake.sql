-- Intake: what arrived, what became of every packet, what was quarantined and why.
-- Tables compared between environments use natural keys only (no identity columns, no arrival times),
-- so that the same telemetry ingested in any order gives identical content. Arrival times and run
-- statistics live in ingest_log, which comparisons skip.

CREATE TABLE IF NOT EXISTS soc_settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE deliveries (
    file_name        text PRIMARY KEY,          -- the delivered file, e.g. CEB-20160801T0017.tm
    pass_id          text NOT NULL,
    station          text NOT NULL,
    delivery         integer NOT NULL,          -- 1 first delivery, 2.. repeated deliveries of the pass
    byte_count       bigint NOT NULL,           -- bytes received
    sha256           text NOT NULL,             -- of the bytes received
    declared_bytes   bigint NOT NULL,           -- from the sidecar
    declared_sha256  text NOT NULL,
    declared_packets integer NOT NULL,
    size_ok          boolean NOT NULL,
    checksum_ok      boolean NOT NULL,
    aos_utc          text NOT NULL,
    los_utc          text NOT NULL,
    UNIQUE (pass_id, delivery)
);

-- One row per packet received (per copy), or per byte range that is not a valid packet.
CREATE TABLE packet_ledger (
    file_name   text NOT NULL REFERENCES deliveries (file_name),
    byte_offset bigint NOT NULL,
    length      integer NOT NULL,
    apid        smallint,                       -- NULL where the bytes could not be framed
    seq         integer,
    obt         double precision,
    status      text NOT NULL CHECK (status IN ('ingested', 'duplicate', 'quarantined')),
    reason      text,                           -- why it was quarantined
    chunk_id    bigint,
    PRIMARY KEY (file_name, byte_offset),
    CHECK ((status = 'quarantined') = (reason IS NOT NULL))
);
-- De-duplication key: one ingested copy per (APID, sequence count, on-board time).
CREATE UNIQUE INDEX packet_ledger_one_ingested ON packet_ledger (apid, seq, obt) WHERE status = 'ingested';
CREATE INDEX packet_ledger_chunk ON packet_ledger (chunk_id) WHERE status = 'ingested';

CREATE TABLE quarantine (
    file_name   text NOT NULL,
    byte_offset bigint NOT NULL,
    reason      text NOT NULL,
    apid        smallint,
    seq         integer,
    bytes       bytea NOT NULL,                 -- the bad bytes, kept for inspection
    PRIMARY KEY (file_name, byte_offset),
    FOREIGN KEY (file_name, byte_offset) REFERENCES packet_ledger (file_name, byte_offset)
);

-- The ingested packets themselves (the canonical copy of each), the input of chunk reduction.
CREATE TABLE raw_packets (
    apid     smallint NOT NULL,
    seq      integer NOT NULL,
    obt      double precision NOT NULL,
    chunk_id bigint NOT NULL,
    packet   bytea NOT NULL,
    PRIMARY KEY (apid, seq, obt)
);
CREATE INDEX raw_packets_chunk ON raw_packets (chunk_id);

-- Which copy of a packet is the ingested one does not depend on arrival order: the canonical copy is the
-- first in (delivery, pass_id, byte_offset) order; a canonical copy arriving later demotes the earlier one.
CREATE VIEW delivery_summary AS
SELECT d.file_name, d.pass_id, d.delivery, d.size_ok, d.checksum_ok, d.declared_packets,
       count(*) FILTER (WHERE l.status = 'ingested')    AS n_ingested,
       count(*) FILTER (WHERE l.status = 'duplicate')   AS n_duplicate,
       count(*) FILTER (WHERE l.status = 'quarantined') AS n_quarantined
FROM deliveries d LEFT JOIN packet_ledger l USING (file_name)
GROUP BY d.file_name;

CREATE TABLE ingest_log (
    run_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    file_name   text NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    outcome     text NOT NULL,                  -- ingested | already_ingested | rejected
    detail      text
);
