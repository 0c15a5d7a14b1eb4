-- A tag's audience is paged by id (keyset). The GIN index on `tags` finds a
-- tag's rows but cannot return them in id order, so a page was either a walk
-- of the primary key filtering out the other tags' rows (as long as the whole
-- table when the tag's members are few or all recent) or a bitmap scan of the
-- whole tag and a sort: a fan-out to N cost O(N²/chunk). This table holds one
-- row per (tag, subscription), and its primary key returns a tag's members in
-- id order from any starting id.
--
-- `subscriptions.tags` stays the source of truth and triggers keep this table
-- in step, in the same transaction as the row's change. Triggers rather than
-- the worker's statements, because every writer is then covered: replicas of
-- the previous version still running during a rolling upgrade (which know
-- nothing of this table), the `demo` and bench cleanups, an operator's SQL.
-- The update trigger fires only when the tags (or the id) change, so a
-- re-registration with the same tags writes nothing here. Maintenance goes
-- through the primary key only (a row's old tags are known), hence no foreign
-- key, whose check on every delete would need an index on subscription_id.
CREATE TABLE subscription_tags (
    tag text NOT NULL,
    subscription_id uuid NOT NULL,
    PRIMARY KEY (tag, subscription_id)
);

CREATE FUNCTION subscription_tags_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE subscription_tags;
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        DELETE FROM subscription_tags
        WHERE tag = ANY (OLD.tags) AND subscription_id = OLD.id;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM subscription_tags
        WHERE tag = ANY (OLD.tags) AND subscription_id = OLD.id
          AND (OLD.id <> NEW.id OR NOT tag = ANY (NEW.tags));
    END IF;
    INSERT INTO subscription_tags (tag, subscription_id)
    SELECT DISTINCT tag, NEW.id FROM unnest(NEW.tags) AS tag WHERE tag IS NOT NULL
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

-- Creating the triggers locks `subscriptions` against writes (not reads) until
-- this migration commits, so no write falls between them and the backfill.
CREATE TRIGGER subscription_tags_insert AFTER INSERT ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION subscription_tags_follow();
CREATE TRIGGER subscription_tags_update AFTER UPDATE OF id, tags ON subscriptions
    FOR EACH ROW WHEN (OLD.tags IS DISTINCT FROM NEW.tags OR OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION subscription_tags_follow();
CREATE TRIGGER subscription_tags_delete AFTER DELETE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION subscription_tags_follow();
CREATE TRIGGER subscription_tags_truncate AFTER TRUNCATE ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION subscription_tags_follow();

INSERT INTO subscription_tags (tag, subscription_id)
SELECT DISTINCT tag, id FROM subscriptions, unnest(tags) AS tag WHERE tag IS NOT NULL
ON CONFLICT DO NOTHING;
