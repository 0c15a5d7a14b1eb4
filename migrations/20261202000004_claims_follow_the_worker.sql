-- A claim belongs to a worker replica and lasts while that replica is alive,
-- however long its fan-out runs: each replica refreshes its row here every
-- second, and a claim whose owner has not been seen for a few seconds may be
-- taken over. `claimed_until` remains for claims made before this migration.
CREATE TABLE workers (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE deliveries ADD COLUMN claimed_by uuid;
