-- CloudEvents 1.0: `source` and `id` together identify an event; two services
-- may both send id "order-1". A delivery is keyed by the event's source too.
-- Rows written before this migration did not record the source and keep an
-- empty one: they are final or retrying deliveries whose messages are acked
-- or waiting in a delay queue, so nothing matches them again except a
-- redelivery right at the upgrade, and they are pruned by age like any other.
ALTER TABLE deliveries ADD COLUMN event_source text NOT NULL DEFAULT '';
ALTER TABLE deliveries ALTER COLUMN event_source DROP DEFAULT;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
ALTER TABLE deliveries ADD PRIMARY KEY (event_source, event_id, subscription_id);
