-- The electronic logbook (eLog): what was done to the Main Database's environment, and when. The
-- validation environment records every clone here (the time it took, the WAL position it copies, whether
-- it verified); failovers and switchovers are recorded too. Rows are appended, never changed.

CREATE TABLE elog (
    entry_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    logged_at  timestamptz NOT NULL DEFAULT now(),
    kind       text NOT NULL CHECK (kind IN ('clone', 'clone_refused', 'clone_destroyed', 'switchover',
                                             'failover', 'rejoin')),
    subject    text NOT NULL,                  -- the clone's or the server's name
    lsn        pg_lsn,                         -- the WAL position the entry refers to
    seconds    double precision,               -- how long it took
    ok         boolean,                        -- verified / succeeded
    details    jsonb NOT NULL DEFAULT '{}'     -- row counts, checks run, messages
);
CREATE INDEX elog_kind_time ON elog (kind, logged_at);
