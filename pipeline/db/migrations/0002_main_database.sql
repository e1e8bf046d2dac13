-- Main Database: the science tables, sources and transits, partitioned by the HEALPix pixel of the source.
--
-- healpix is the nested HEALPix pixel, at order k = soc_settings.healpix_order, of the source. Gaia source
-- ids carry their level-12 nested pixel in bits 35 and up, so for k <= 12
--     healpix = source_id >> (35 + 2 * (12 - k))            (k = 5: source_id >> 49)
-- and a CHECK constraint holds every row to it (a generated column cannot be a partition key).
--
-- Each table has one leaf partition per pixel, 12 * 4^k of them (12,288 at k = 5), created here from the
-- settings `soc db init` stored before this migration ran. The leaves hang under 12 * 4^g groups of
-- 4^(k - g) consecutive pixels, g = k / 2 (k = 5: 192 groups of 64 pixels): the parent is partitioned
-- BY RANGE (healpix) into the groups, each group BY LIST (healpix) into its pixels. Every pixel is one leaf
-- all the same (the same pruning, the same routing), but creating a partition costs time proportional to
-- the partitions its parent already has, so one flat level of 12,288 is quadratic: measured 140 s for
-- the transits table alone, against 22 s in two levels (docs/main_database.md). Names: <table>_g<group>,
-- <table>_p<pixel>, zero-padded, e.g. transits_p00042 in transits_g000.
--
-- soc:no-transaction -- The partitions are created in batches, one commit per group, because a
-- transaction holds a lock on every relation it creates, and 12,288 partitions with their indexes (over
-- 60,000 relations) overflow the shared lock table (max_locks_per_transaction x (max_connections +
-- workers): 512 x 82 with LocalServer's settings). The whole file is therefore one DO block, run outside a
-- transaction block, written so that running it again after a failure finishes the job (IF NOT EXISTS
-- everywhere, constraints added only where missing); schema_migrations records it once it has succeeded.
--
-- The constraints (primary keys and CHECKs) are added to the parents after every leaf exists, one
-- statement per constraint that reaches every partition, not declared on the parents up front: PostgreSQL
-- looks for foreign keys to clone into each new partition by a sequential scan of pg_constraint, so each
-- leaf created under constrained parents costs time in proportion to the constraints of the leaves made
-- before it (quadratic: 240 s for both tables at k = 5, against 87 s this way; docs/main_database.md).
-- The schema is the same either way (tests/test_db_load.py compares the catalogues); the earlier text is
-- kept in superseded/, and a database that applied it is up to date.
--
-- Compared tables use natural keys only (no identity columns, no load times): a transit is identified by
-- its source and its mean on-board time; transit_chunks records which revision of each chunk is loaded
-- and the pixels it wrote to, so that replacing a chunk deletes from those partitions only.

DO $migration$
DECLARE
    k      integer;
    g      integer;
    shift  integer;
    n      integer;
    per    integer;
    pw     integer;
    gw     integer;
    q      integer;
    p      integer;
    tbl    text;
    con    text;
    ddl    text;
BEGIN
    SELECT value::integer INTO k FROM soc_settings WHERE key = 'healpix_order';
    IF k IS NULL THEN
        RAISE EXCEPTION 'soc_settings has no healpix_order: run `soc db init` first';
    END IF;
    IF k < 0 OR k > 12 THEN
        RAISE EXCEPTION 'healpix_order must be within 0..12 (source ids carry the level-12 pixel), not %', k;
    END IF;
    shift := 35 + 2 * (12 - k);
    g := k / 2;
    n := 12 * (1 << (2 * k));
    per := 1 << (2 * (k - g));
    pw := length((n - 1)::text);
    gw := length((n / per - 1)::text);

    CREATE TABLE IF NOT EXISTS sources (
        source_id bigint  NOT NULL,
        healpix   integer NOT NULL,
        ra        double precision NOT NULL,          -- deg, ICRS
        dec       double precision NOT NULL,          -- deg
        g_ref     real,                               -- catalogue G magnitude; NULL for new sources
        origin    text NOT NULL
    ) PARTITION BY RANGE (healpix);

    CREATE TABLE IF NOT EXISTS transits (
        source_id      bigint   NOT NULL,
        healpix        integer  NOT NULL,
        obt            double precision NOT NULL,     -- mean on-board time of the transit's windows
        t              double precision NOT NULL,     -- UTC mission seconds
        chunk_id       bigint   NOT NULL,
        revision       integer  NOT NULL,
        apid           smallint NOT NULL,             -- provenance: the star packet
        seq            integer  NOT NULL,
        fov            smallint NOT NULL,
        ccd_row        smallint NOT NULL,
        ac_pixel       smallint NOT NULL,
        ra             double precision NOT NULL,     -- deg, ICRS
        dec            double precision NOT NULL,     -- deg
        pos_err_mas    real,
        g_flux         real,                          -- e-/s
        g_flux_err     real,
        g_mag          real,
        g_mag_err      real,
        n_good         smallint NOT NULL,             -- windows used
        flags          integer  NOT NULL,
        match_dist_mas real,
        ambiguous      boolean  NOT NULL
    ) PARTITION BY RANGE (healpix);
    CREATE INDEX IF NOT EXISTS transits_chunk ON transits (chunk_id);

    EXECUTE format('COMMENT ON COLUMN sources.healpix IS %L',
                   format('nested HEALPix pixel at order %s: source_id >> %s', k, shift));
    EXECUTE format('COMMENT ON COLUMN transits.healpix IS %L',
                   format('nested HEALPix pixel at order %s of the source: source_id >> %s', k, shift));

    FOREACH tbl IN ARRAY ARRAY['sources', 'transits'] LOOP
        FOR q IN 0 .. n / per - 1 LOOP
            EXECUTE format('CREATE TABLE IF NOT EXISTS %1$s_g%2$s PARTITION OF %1$s'
                           ' FOR VALUES FROM (%3$s) TO (%4$s) PARTITION BY LIST (healpix)',
                           tbl, lpad(q::text, gw, '0'), q * per, (q + 1) * per);
            FOR p IN q * per .. (q + 1) * per - 1 LOOP
                EXECUTE format('CREATE TABLE IF NOT EXISTS %1$s_p%2$s PARTITION OF %1$s_g%3$s'
                               ' FOR VALUES IN (%4$s)',
                               tbl, lpad(p::text, pw, '0'), lpad(q::text, gw, '0'), p);
            END LOOP;
            COMMIT;  -- one group at a time: at most 4^(k - g) partitions' locks held
        END LOOP;
    END LOOP;

    -- Each of these reaches every partition in one transaction: it locks each leaf and group with the new
    -- index (about 25,000 locks for a primary key at k = 5), fewer than a query over the whole table.
    FOR tbl, con, ddl IN VALUES
        ('sources', 'sources_pkey', 'PRIMARY KEY (healpix, source_id)'),
        ('sources', 'sources_origin_check', $$CHECK (origin IN ('catalogue', 'new'))$$),
        ('sources', 'sources_healpix_of_source', format('CHECK (healpix = source_id >> %s)', shift)),
        ('transits', 'transits_pkey', 'PRIMARY KEY (healpix, source_id, obt)'),
        ('transits', 'transits_healpix_of_source', format('CHECK (healpix = source_id >> %s)', shift))
    LOOP
        IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = tbl::regclass AND conname = con) THEN
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', tbl, con, ddl);
            COMMIT;
        END IF;
    END LOOP;

    -- One row per chunk whose transits are loaded: the revision, its row count and the pixels (leaf
    -- partitions) it wrote to. Replacing a chunk deletes its old rows from these partitions only, where a
    -- DELETE by chunk_id alone would plan, lock and probe every partition.
    CREATE TABLE IF NOT EXISTS transit_chunks (
        chunk_id   bigint PRIMARY KEY,
        revision   integer NOT NULL,
        n_transits bigint NOT NULL,
        pixels     integer[] NOT NULL                 -- sorted, distinct
    );
END
$migration$;

