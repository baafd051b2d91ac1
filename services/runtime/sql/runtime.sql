-- name: claim_events
-- Records the inbox keys of a batch; returns only those not seen before.
INSERT INTO processed_events (consumer, event_id)
SELECT :consumer, unnest(:event_ids::text[])
ON CONFLICT DO NOTHING
RETURNING event_id;

-- name: append_outbox*!
INSERT INTO outbox (topic, key, value, headers, event_id)
VALUES (:topic, :key, :value, :headers::jsonb, :event_id);

-- name: try_relay_lock$
-- One relay per service publishes at a time, so events of one key leave in commit order.
SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.outbox_relay'));

-- name: unsent_outbox
SELECT id, topic, key, value, headers
FROM outbox
WHERE sent_at IS NULL
ORDER BY id
LIMIT :limit;

-- name: mark_sent!
UPDATE outbox SET sent_at = now() WHERE id = ANY(:ids::bigint[]);
