-- Subscriptions are upserted by endpoint: a browser that re-subscribes, or a
-- device handed to another user, replaces the old row instead of duplicating it.
CREATE TABLE subscriptions (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    endpoint text NOT NULL UNIQUE,
    p256dh text NOT NULL,
    auth text NOT NULL,
    tags text[] NOT NULL DEFAULT '{}',
    -- PushSubscription.expirationTime: past it the browser has dropped the subscription.
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_success_at timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0
);

-- Keyset pagination over a user's or a tag's subscriptions walks by id.
CREATE INDEX subscriptions_user_id ON subscriptions (user_id, id);
CREATE INDEX subscriptions_tags ON subscriptions USING gin (tags);

-- The idempotency record: one row per (notification, subscription). A row is
-- claimed ('sending', with a lease) before the push service is called, so two
-- replicas handling a redelivered event never both send it, and a redelivery
-- skips what is already final. One-off subscriptions are keyed by a UUID
-- derived from their endpoint, so there is no foreign key.
CREATE TABLE deliveries (
    event_id text NOT NULL,
    subscription_id uuid NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    last_status_code smallint,
    claimed_until timestamptz,
    result_published boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, subscription_id)
);

-- Old rows are pruned by age.
CREATE INDEX deliveries_updated_at ON deliveries (updated_at);
