-- A delivery row is written three or four times (claim, record, result mark).
-- Indexing updated_at made every one of those writes touch two indexes; an
-- index on the creation time, which never changes, lets PostgreSQL update the
-- row in place (HOT), and free space on each page keeps room for it.
ALTER TABLE deliveries ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
DROP INDEX deliveries_updated_at;
CREATE INDEX deliveries_created_at ON deliveries (created_at);
ALTER TABLE deliveries SET (fillfactor = 70);
