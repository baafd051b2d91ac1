-- name: claim_events
-- Records the inbox keys of a batch; returns only those not seen before.
INSERT INTO processed_events (event_id)
SELECT unnest(:event_ids::uuid[])
ON CONFLICT DO NOTHING
RETURNING event_id;

-- name: append_outbox!
-- A unit of work's rows in one statement, numbered in the order they were queued, so that the
-- events of one key leave in that order.
INSERT INTO outbox (topic, key, value, headers, event_id, dead_letter, sealed)
SELECT queued.topic, queued.key, queued.value, queued.headers::jsonb, queued.event_id, queued.dead_letter,
       queued.sealed
FROM unnest(:topics::text[], :keys::text[], :event_values::bytea[], :headers::text[], :event_ids::uuid[],
            :dead_letters::boolean[], :sealed::boolean[])
     WITH ORDINALITY AS queued (topic, key, value, headers, event_id, dead_letter, sealed, position)
ORDER BY queued.position;

-- name: lock_cases!
-- Serializes the batches that touch the same case (or application) across the replicas of a
-- service: a handler that decides on the last of several facts (arrival's evidence and booking,
-- disbursement's acceptance and verification) must see the facts another replica committed just
-- before. Taken first, all at once, in one order (of the keys), so two batches never deadlock.
-- The keys are int4s the unit of work derives from the case ids, in the service's own lock class
-- (uow.py: case_lock_key, case_lock_class).
SELECT pg_advisory_xact_lock(:lock_class::int, keys.key)
FROM (SELECT DISTINCT unnest(:keys::int[]) AS key ORDER BY 1) AS keys;

-- name: try_relay_lock$
-- One relay per service publishes at a time, so events of one key leave in commit order. A
-- session lock: the relay holds it on its own connection, with no transaction open, for as long
-- as it relays; the lock goes with the connection if the process dies.
SELECT pg_try_advisory_lock(hashtext(current_schema() || '.outbox_relay'));

-- name: relay_unlock$
SELECT pg_advisory_unlock(hashtext(current_schema() || '.outbox_relay'));

-- name: unsent_outbox
SELECT id, topic, key, value, headers, sealed, dead_letter
FROM outbox
WHERE sent_at IS NULL AND parked_at IS NULL
ORDER BY id
LIMIT :limit;

-- name: park!
UPDATE outbox SET parked_at = now(), park_reason = :reason WHERE id = :id;

-- name: mark_sent!
-- Published events, kept for re-driving (a batch without dead-letter copies: `mark_sent_and_drop`).
UPDATE outbox SET sent_at = now() WHERE id = ANY(:ids::bigint[]);

-- name: mark_sent_and_drop!
-- Published: events are kept for re-driving; dead-letter copies (personal data, on the intake
-- topic) go at once, the `.dlq` topic holding them from now on. One statement, so a copy is never
-- left behind unmarked.
WITH copies AS (
    DELETE FROM outbox WHERE id = ANY(:copy_ids::bigint[]) AND dead_letter
)
UPDATE outbox SET sent_at = now() WHERE id = ANY(:ids::bigint[]) AND NOT dead_letter;

-- name: open_cases!
-- Marks cases as waiting for downstream progress; a case already closed stays closed.
INSERT INTO open_cases (case_key)
SELECT unnest(:keys::text[])
ON CONFLICT (case_key) DO UPDATE SET progressed_at = now()
WHERE open_cases.closed_at IS NULL;

-- name: close_cases!
-- The keys must be distinct (an upsert cannot touch a row twice); sorted, so that two consumers
-- closing overlapping cases never deadlock.
INSERT INTO open_cases (case_key, closed_at) SELECT unnest(:keys::text[]), now()
ON CONFLICT (case_key) DO UPDATE SET closed_at = coalesce(open_cases.closed_at, now());

-- name: stalled_cases
-- Open cases with no progress for their deadline, which doubles with each re-drive up to a cap.
SELECT case_key FROM open_cases
WHERE closed_at IS NULL
  AND progressed_at < now() - make_interval(secs => least(:cap_seconds, :after_seconds * power(2, redrives)))
ORDER BY progressed_at
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: requeue_events!
-- Sends a case's events again: same bytes, same envelope ids, so consumers that already have them
-- deduplicate, and those that lost them (or a wiped broker) get them back.
UPDATE outbox SET sent_at = NULL WHERE key = ANY(:keys::text[]) AND topic = ANY(:topics::text[]);

-- name: mark_redriven!
UPDATE open_cases SET progressed_at = now(), redrives = redrives + 1 WHERE case_key = ANY(:keys::text[]);

-- name: forget_old_events!
-- Outbox rows are kept for re-driving; past the retention, those of closed or unknown cases go.
DELETE FROM outbox o
WHERE o.sent_at < now() - make_interval(hours => :retention_hours)
  AND NOT EXISTS (SELECT 1 FROM open_cases c WHERE c.case_key = o.key AND c.closed_at IS NULL);

-- name: parked_outbox
-- Rows the broker refused for good, for an operator to look at (`homeward dlq parked`).
SELECT id, topic, key, event_id, created_at, parked_at, park_reason
FROM outbox
WHERE parked_at IS NOT NULL
ORDER BY id
LIMIT :limit;

-- name: unpark
-- Hands parked rows back to the relay (`homeward dlq unpark`); all of them when :id is null.
UPDATE outbox SET parked_at = NULL, park_reason = NULL, sent_at = NULL
WHERE parked_at IS NOT NULL AND (:id::bigint IS NULL OR id = :id::bigint)
RETURNING id;

-- name: sent_since
-- What `homeward dlq republish --dry-run` would send again, per topic.
SELECT topic, count(*) AS events
FROM outbox
WHERE sent_at >= :since AND parked_at IS NULL AND (:topic::text IS NULL OR topic = :topic::text)
GROUP BY topic
ORDER BY topic;

-- name: republish_since
-- Hands every event sent since :since back to the relay (after the broker lost its data): same
-- bytes, same envelope ids, so consumers that already have them deduplicate.
WITH requeued AS (
    UPDATE outbox SET sent_at = NULL
    WHERE sent_at >= :since AND parked_at IS NULL AND (:topic::text IS NULL OR topic = :topic::text)
    RETURNING topic
)
SELECT topic, count(*) AS events FROM requeued GROUP BY topic ORDER BY topic;

-- name: oldest_sent$
-- How far back a republish can reach: older sent rows are gone past the retention.
SELECT min(sent_at) FROM outbox WHERE sent_at IS NOT NULL;

-- name: backlog^
-- What /metrics reports at each scrape: events waiting for the relay (the partial index of unsent
-- rows keeps this cheap), rows parked, and cases handed downstream and not yet seen to move on.
SELECT count(*) FILTER (WHERE o.parked_at IS NULL) AS unsent,
       count(*) FILTER (WHERE o.parked_at IS NOT NULL) AS parked,
       coalesce(extract(epoch FROM now() - min(o.created_at) FILTER (WHERE o.parked_at IS NULL)), 0)::float8
           AS oldest_unsent_seconds,
       (SELECT count(*) FROM open_cases WHERE closed_at IS NULL) AS open_cases
FROM outbox o
WHERE o.sent_at IS NULL;

-- name: record_unreadable!
-- Batches the consumer stepped over; a batch met again (after a restart before the offsets moved
-- past it) is counted, not listed twice.
INSERT INTO unreadable_batches AS u (topic, partition, first_offset, last_offset, codec, reason, detail)
SELECT * FROM unnest(:topics::text[], :partitions::int[], :first_offsets::bigint[], :last_offsets::bigint[],
                     :codecs::text[], :reasons::text[], :details::text[])
ON CONFLICT (topic, partition, first_offset) DO UPDATE
SET last_seen_at = now(), times_seen = u.times_seen + 1;

-- name: unreadable_batches
-- For `homeward dlq unreadable`: what was stepped over, newest first.
SELECT topic, partition, first_offset, last_offset, codec, reason, detail, first_seen_at, last_seen_at, times_seen
FROM unreadable_batches
ORDER BY last_seen_at DESC
LIMIT :limit;

-- name: keep_case_keys!
-- A run of cases' wrapped keys, as they came with the accepted event; a case seen again changes
-- nothing, and one erased already (its closing event came first) keeps no key.
INSERT INTO case_keys (case_id, key_id, wrapped, destroyed_at)
SELECT k.case_id, k.key_id,
       CASE WHEN c.case_id IS NULL THEN k.wrapped END,
       CASE WHEN c.case_id IS NOT NULL THEN now() END
FROM unnest(:case_ids::uuid[], :key_ids::text[], :wrapped::text[]) AS k (case_id, key_id, wrapped)
LEFT JOIN closed_cases c ON c.case_id = k.case_id AND c.erased_at IS NOT NULL
ON CONFLICT (case_id) DO NOTHING;

-- name: close_for_erasure!
-- A case's first closing counts (the case ids distinct and sorted, so two consumers never deadlock).
INSERT INTO closed_cases (case_id, closed_by)
SELECT * FROM unnest(:case_ids::uuid[], :topics::text[])
ON CONFLICT (case_id) DO NOTHING;

-- name: due_for_erasure
-- Closed cases past the retention and not yet erased, oldest first; a concurrent sweep (another
-- replica, `homeward retention run`) takes others.
SELECT case_id FROM closed_cases
WHERE erased_at IS NULL AND closed_at <= now() - make_interval(days => :days)
ORDER BY closed_at
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: destroy_case_keys!
-- Erasure: the cases' keys destroyed, and the cases marked erased.
WITH destroyed AS (
    UPDATE case_keys SET wrapped = NULL, destroyed_at = now()
    WHERE case_id = ANY(:case_ids::uuid[]) AND wrapped IS NOT NULL
)
UPDATE closed_cases SET erased_at = now() WHERE case_id = ANY(:case_ids::uuid[]);

-- name: erasure_backlog^
SELECT count(*) FILTER (WHERE erased_at IS NULL AND closed_at <= now() - make_interval(days => :days)) AS due,
       count(*) FILTER (WHERE erased_at IS NULL AND closed_at > now() - make_interval(days => :days)) AS waiting,
       count(*) FILTER (WHERE erased_at IS NOT NULL) AS erased
FROM closed_cases;

-- name: case_keys_to_rewrap
-- Live case keys wrapped by a retired program key, a batch at a time in case id order from
-- :after (so a key that does not unwrap is passed over, not met again).
SELECT case_id, key_id, wrapped FROM case_keys
WHERE wrapped IS NOT NULL AND key_id = ANY(:retired_key_ids::text[]) AND case_id > :after::uuid
ORDER BY case_id
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: rewrap_case_keys!
UPDATE case_keys k SET key_id = r.key_id, wrapped = r.wrapped, rewrapped_at = now()
FROM unnest(:case_ids::uuid[], :key_ids::text[], :wrapped::text[]) AS r (case_id, key_id, wrapped)
WHERE k.case_id = r.case_id AND k.wrapped IS NOT NULL;

-- name: case_keys_by_program_key
-- For `homeward keys rewrap --dry-run` and `status`: live case keys per program key.
SELECT key_id, count(*) AS cases FROM case_keys WHERE wrapped IS NOT NULL GROUP BY key_id ORDER BY key_id;

-- name: live_case_key_ids
-- The data keys this service's live case keys need (checked at start: each must be held).
SELECT DISTINCT key_id FROM case_keys WHERE wrapped IS NOT NULL;

-- name: erased_with_live_keys
-- Erased cases that hold a live key again: their accepted event was stored while the sweep
-- erased them (it could not see that row yet). The sweep erases them again.
SELECT k.case_id FROM case_keys k JOIN closed_cases c USING (case_id)
WHERE k.wrapped IS NOT NULL AND c.erased_at IS NOT NULL
ORDER BY k.case_id
LIMIT :limit
FOR UPDATE OF k SKIP LOCKED;
