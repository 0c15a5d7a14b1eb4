-- The result reason of a final delivery, so that a redelivered job can publish
-- a missing result event exactly as the first attempt would have.
ALTER TABLE deliveries ADD COLUMN reason text;

-- Sweeping expired subscriptions walks this index.
CREATE INDEX subscriptions_expires_at ON subscriptions (expires_at) WHERE expires_at IS NOT NULL;
