-- Time-ordered chunks and their revisions. A revision is the reduction of one set of ingested packets;
-- data arriving after a chunk was reduced makes a new revision, recorded here, never merged silently.
-- The revision history depends on when data arrived; the content of the current revisions does not.

INSERT INTO soc_settings (key, value) VALUES ('lateness_seconds', '21600') ON CONFLICT (key) DO NOTHING;

CREATE TABLE chunks (
    chunk_id      bigint NOT NULL,              -- floor(obt / chunk_seconds)
    revision      integer NOT NULL,             -- 1, 2, ... in the order they were reduced
    reason        text NOT NULL CHECK (reason IN ('complete', 'deadline', 'late_data')),
    n_packets     integer NOT NULL,             -- ingested packets of the chunk this revision reduced
    input_digest  text NOT NULL,                -- md5 of the sorted (apid, seq, obt) keys of those packets
    horizon_obt   double precision NOT NULL,    -- how far the downlink had delivered when it was reduced
    gaps          integer NOT NULL,             -- sequence gaps touching the chunk at that time
    n_transits    integer NOT NULL,
    PRIMARY KEY (chunk_id, revision),
    UNIQUE (chunk_id, input_digest)
);

CREATE VIEW current_chunks AS
SELECT DISTINCT ON (chunk_id) * FROM chunks ORDER BY chunk_id, revision DESC;
