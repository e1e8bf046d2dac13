-- Intake speed: the checks of packet_ledger once per statement instead of once per row, one index less.
--
-- The reference packet_ledger.file_name -> deliveries was a foreign key, checked by a trigger per ledger
-- row: a third of the time of writing the ledger (one row per packet copy, ~180,000 a pass). It is now
-- checked once per statement, on the statement's new rows (transition tables), in both directions: ledger
-- rows must name a delivery, and a delivery that ledger rows name cannot be deleted or renamed. Intake is
-- the only writer of both tables and writes a file's delivery row first, in the same transaction.
--
-- packet_ledger_chunk (chunk_id of the ingested copies) is read by no query: the chunks are found and read
-- in raw_packets (raw_packets_chunk).

ALTER TABLE packet_ledger DROP CONSTRAINT packet_ledger_file_name_fkey;
DROP INDEX packet_ledger_chunk;

CREATE FUNCTION soc_ledger_names_a_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing text;
BEGIN
    SELECT n.file_name INTO missing FROM new_rows n
    WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.file_name = n.file_name) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'packet_ledger rows name file % that deliveries does not hold', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION soc_delivery_still_named() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named text;
BEGIN
    SELECT o.file_name INTO named FROM old_rows o
    WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.file_name = o.file_name)
      AND EXISTS (SELECT 1 FROM packet_ledger l WHERE l.file_name = o.file_name) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'delivery % is still named by packet_ledger rows', named
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER packet_ledger_names_a_delivery_ins AFTER INSERT ON packet_ledger
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION soc_ledger_names_a_delivery();
CREATE TRIGGER packet_ledger_names_a_delivery_upd AFTER UPDATE ON packet_ledger
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION soc_ledger_names_a_delivery();
CREATE TRIGGER deliveries_still_named_del AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION soc_delivery_still_named();
CREATE TRIGGER deliveries_still_named_upd AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION soc_delivery_still_named();
