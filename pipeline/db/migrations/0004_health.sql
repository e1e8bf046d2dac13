-- Payload health per chunk revision: the events raised against the limits, and the per-chunk summary
-- the HTML report plots. Written in the chunk revision's transaction, replaced with it.

CREATE TABLE health_events (
    chunk_id    bigint NOT NULL,
    revision    integer NOT NULL,
    kind        text NOT NULL,
    severity    text NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    ccd_row     smallint NOT NULL,              -- -1 when not applicable
    ccd_column  smallint NOT NULL,              -- -1 when not applicable (0 = SM, 1..9 = AF1..AF9)
    t_start_obt double precision NOT NULL,
    t_end_obt   double precision NOT NULL,
    value       double precision,
    limit_value double precision,
    detail      text NOT NULL,
    PRIMARY KEY (chunk_id, revision, kind, ccd_row, ccd_column, t_start_obt)
);

CREATE TABLE health_summary (
    chunk_id bigint NOT NULL,
    revision integer NOT NULL,
    summary  jsonb NOT NULL,
    PRIMARY KEY (chunk_id, revision)
);
