-- Whether each chunk revision's downstream product (pipeline/distribute.py) has been published. The reducer
-- writes the product after the revision commits, then records it here; a reducer stopped in between (a
-- crash, the database lost) leaves it false, and the next reduction publishes it (writing a product again
-- changes nothing). A reducer without an outbox publishes nothing and leaves it false. The revisions made
-- before this migration count as published: what became of them is not this release's to redo.
ALTER TABLE chunks ADD COLUMN published boolean;
UPDATE chunks SET published = true;
ALTER TABLE chunks ALTER COLUMN published SET DEFAULT false, ALTER COLUMN published SET NOT NULL;
