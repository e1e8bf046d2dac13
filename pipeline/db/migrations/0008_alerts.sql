-- Photometric science alerts (issue 5, docs/alerts-operations.md): the alerts runs and the chunk revisions
-- each scanned, the candidates they raised, the candidates' life cycle, and the alert names.
--
-- An alerts run (pipeline/alerts/run.py) scans the chunk revisions loaded (transit_chunks) that no earlier
-- run scanned (alert_run_chunks) and records itself, the revisions, and the candidates it found in ONE
-- transaction at its end: a run that dies half-way leaves nothing, and the next run does its work. A chunk
-- re-reduced into a new revision is new data again (its (chunk_id, revision) was never scanned); the
-- candidates' natural key (source, detector, triggering transit time) makes scanning the same transits
-- again add nothing.
--
-- Life cycle of a candidate (alert_status_flow): candidate -> assessed -> published, candidate -> rejected,
-- assessed -> rejected. Every change is a row of alert_transitions (who, when, why); triggers refuse any
-- other change of alert_candidates.status, and the foreign key of alert_transitions refuses any other pair.
-- A name is given once, at publication (alert_names), and never changed, reused nor deleted: triggers
-- refuse UPDATE, DELETE and TRUNCATE of alert_names.
--
-- Privileges: the pipeline writer runs the migrations and owns these tables. The alerts login (soc_alerts,
-- ansible/group_vars/all/main.yml), which reads the Main Database through pg_read_all_data, may also run
-- the alerts system: it gets INSERT on the alert tables and UPDATE of the candidates' assessment columns,
-- nothing on any other table, and no DELETE or TRUNCATE anywhere. Granted only where that role exists
-- (the tests' throwaway servers have no such role).

CREATE TABLE alert_runs (
    run_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL,
    n_chunk_revisions integer NOT NULL,            -- rows of alert_run_chunks of the run
    pixels_scanned   integer NOT NULL,             -- HEALPix pixels (order soc_settings.healpix_order)
    sources_examined bigint NOT NULL,              -- sources with new transits whose history was evaluated
    transits_read    bigint NOT NULL,              -- history rows read (all transits of those sources)
    n_verdicts       integer NOT NULL,             -- raised by a detector (candidates and rejected)
    n_candidates     integer NOT NULL,             -- verdicts no filter rejected
    n_candidates_new integer NOT NULL,             -- of those, not already candidates (stored by this run)
    verdicts_by_detector jsonb NOT NULL,           -- {"brightening": {"raised": n, "candidates": n}, ...}
    rejected_by_filter   jsonb NOT NULL,           -- {"single_fov": n, ...}: a verdict counts once per filter
    thresholds       jsonb NOT NULL,               -- pipeline.alerts.thresholds.Thresholds used
    scan             text NOT NULL CHECK (scan IN ('pixel', 'source')),
    workers          integer NOT NULL,
    software_version text NOT NULL,
    CHECK (finished_at >= started_at)
);

-- Which chunk revisions each run scanned: a chunk revision is scanned once, by one run.
CREATE TABLE alert_run_chunks (
    chunk_id bigint NOT NULL,
    revision integer NOT NULL,
    run_id   bigint NOT NULL REFERENCES alert_runs (run_id),
    PRIMARY KEY (chunk_id, revision)
);
CREATE INDEX alert_run_chunks_run ON alert_run_chunks (run_id);

CREATE TABLE alert_statuses (
    status text PRIMARY KEY
);
INSERT INTO alert_statuses VALUES ('candidate'), ('assessed'), ('published'), ('rejected');

-- The allowed changes of status ('' as from_status: the creation of a candidate by a run).
CREATE TABLE alert_status_flow (
    from_status text NOT NULL,
    to_status   text NOT NULL REFERENCES alert_statuses (status),
    PRIMARY KEY (from_status, to_status)
);
INSERT INTO alert_status_flow VALUES
    ('', 'candidate'),
    ('candidate', 'assessed'),
    ('candidate', 'rejected'),
    ('assessed', 'published'),
    ('assessed', 'rejected');

CREATE TABLE alert_candidates (
    candidate_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id     bigint NOT NULL,
    detector      text NOT NULL CHECK (detector IN ('new_source', 'brightening', 'fading')),
    t_trigger     double precision NOT NULL,   -- UTC mission seconds of the triggering transit
    run_id        bigint NOT NULL REFERENCES alert_runs (run_id),  -- the run that raised it
    healpix       integer NOT NULL,            -- of the source (as in transits and sources)
    ra            double precision NOT NULL,   -- deg, ICRS: the source's position
    dec           double precision NOT NULL,
    alert_mag     double precision NOT NULL,   -- G of the triggering transit
    historic_mag  double precision,            -- NULL for new sources
    historic_std  double precision,
    n_historic    integer NOT NULL,
    significance  double precision NOT NULL,   -- sigma
    status        text NOT NULL DEFAULT 'candidate' REFERENCES alert_statuses (status),
    class         text NOT NULL DEFAULT 'unknown',  -- set at assessment (the index's Class)
    comment       text NOT NULL DEFAULT '',         -- set at assessment (the index's Comment)
    UNIQUE (source_id, detector, t_trigger)
);
CREATE INDEX alert_candidates_status ON alert_candidates (status);
CREATE INDEX alert_candidates_run ON alert_candidates (run_id);

CREATE TABLE alert_transitions (
    transition_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    candidate_id  bigint NOT NULL REFERENCES alert_candidates (candidate_id),
    from_status   text NOT NULL,             -- '' for the creation
    to_status     text NOT NULL,
    who           text NOT NULL CHECK (who <> ''),
    at            timestamptz NOT NULL DEFAULT now(),
    comment       text NOT NULL DEFAULT '',
    FOREIGN KEY (from_status, to_status) REFERENCES alert_status_flow (from_status, to_status)
);
CREATE INDEX alert_transitions_candidate ON alert_transitions (candidate_id, transition_id);

CREATE TABLE alert_names (
    name         text PRIMARY KEY CHECK (name ~ '^Gaia[0-9]{2}[a-z]{3,}$'),
    candidate_id bigint NOT NULL UNIQUE REFERENCES alert_candidates (candidate_id),
    year         smallint NOT NULL CHECK (year BETWEEN 0 AND 99),  -- two-digit year of publication
    seq          integer NOT NULL CHECK (seq >= 0),               -- 0 = aaa, in order of publication
    assigned_at  timestamptz NOT NULL,                             -- the publication time
    UNIQUE (year, seq)
);

-- A candidate's status changes only along alert_status_flow; the message names the candidate and both
-- states (pipeline.alerts.candidates checks first and says the same; this is the database's own guard).
CREATE FUNCTION soc_alert_status_flow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'candidate' THEN
            RAISE EXCEPTION 'alert candidate %: a new candidate has status candidate, not %',
                NEW.candidate_id, NEW.status USING ERRCODE = 'check_violation';
        END IF;
    ELSIF NEW.status IS DISTINCT FROM OLD.status AND NOT EXISTS (
        SELECT 1 FROM alert_status_flow f WHERE f.from_status = OLD.status AND f.to_status = NEW.status
    ) THEN
        RAISE EXCEPTION 'alert candidate %: % -> % is not an allowed transition', OLD.candidate_id,
            OLD.status, NEW.status USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER alert_candidates_status_flow BEFORE INSERT OR UPDATE OF status ON alert_candidates
    FOR EACH ROW EXECUTE FUNCTION soc_alert_status_flow();

CREATE FUNCTION soc_alert_names_are_permanent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'alert names are permanent: % on alert_names refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER alert_names_permanent BEFORE UPDATE OR DELETE ON alert_names
    FOR EACH ROW EXECUTE FUNCTION soc_alert_names_are_permanent();
CREATE TRIGGER alert_names_permanent_truncate BEFORE TRUNCATE ON alert_names
    FOR EACH STATEMENT EXECUTE FUNCTION soc_alert_names_are_permanent();

DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'soc_alerts') THEN
        GRANT INSERT ON alert_runs, alert_run_chunks, alert_candidates, alert_transitions, alert_names
            TO soc_alerts;
        GRANT UPDATE (status, class, comment) ON alert_candidates TO soc_alerts;
    END IF;
END
$grants$;
