-- A chunk can also be reduced because the operator flushed every chunk (the end of a replay or of a
-- mission phase): soc reduce --flush.
ALTER TABLE chunks DROP CONSTRAINT chunks_reason_check;
ALTER TABLE chunks ADD CONSTRAINT chunks_reason_check
    CHECK (reason IN ('complete', 'deadline', 'late_data', 'flush'));
