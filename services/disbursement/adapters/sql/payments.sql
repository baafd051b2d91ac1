-- name: remember_cases!
INSERT INTO cases (case_id, identity_key, correlationid, sealed, accepted_event_id, instrument_fingerprint)
SELECT * FROM unnest(:case_ids::uuid[], :identity_keys::text[], :correlationids::uuid[], :sealed::text[],
                     :accepted_event_ids::uuid[], :fingerprints::text[])
ON CONFLICT (case_id) DO NOTHING;

-- name: remember_verified!
INSERT INTO verified_arrivals (case_id, verified_event_id)
SELECT * FROM unnest(:case_ids::uuid[], :verified_event_ids::uuid[])
ON CONFLICT (case_id) DO NOTHING;

-- name: payable_cases
-- Of the cases asked about (distinct), in the order asked: those accepted and verified that have
-- neither a payment nor a refusal yet.
SELECT c.case_id, c.identity_key, c.correlationid, v.verified_event_id, c.instrument_fingerprint
FROM unnest(:case_ids::uuid[]) WITH ORDINALITY AS asked (case_id, position)
JOIN cases c USING (case_id)
JOIN verified_arrivals v USING (case_id)
WHERE NOT EXISTS (SELECT 1 FROM payments p WHERE p.case_id = c.case_id)
  AND NOT EXISTS (SELECT 1 FROM refusals r WHERE r.case_id = c.case_id)
ORDER BY asked.position;

-- name: create_payments
-- One payment per identity, ever: a row comes back only for an identity that never had one (the
-- first in the batch wins among cases of one identity). The new rows stay locked until commit;
-- they go in in key order, so that two transactions with overlapping identities never deadlock.
-- In the same statement (contract v1.1 review holds), each new payment claims its instrument's
-- fingerprint, in fingerprint order: `claimed` is false where another payment holds it (looked up
-- next by `instrument_holders`, a fresh statement that sees what committed meanwhile), NULL where
-- the case has no fingerprint; `paused` says whether the program is paused.
WITH n AS (
    SELECT * FROM unnest(:payment_ids::uuid[], :case_ids::uuid[], :identity_keys::text[], :correlationids::uuid[],
                         :cause_event_ids::uuid[], :fingerprints::text[]) WITH ORDINALITY
         AS n (payment_id, case_id, identity_key, correlationid, cause_event_id, fingerprint, position)
), created AS (
    INSERT INTO payments (payment_id, case_id, identity_key, amount, currency, status, hold_reason, correlationid,
                          cause_event_id)
    SELECT n.payment_id, n.case_id, n.identity_key, :amount, :currency, 'held', 'budget_exhausted', n.correlationid,
           n.cause_event_id
    FROM n
    ORDER BY n.identity_key, n.position
    ON CONFLICT DO NOTHING
    RETURNING payment_id, case_id, identity_key, amount, currency, reserve_attempts, correlationid, cause_event_id
), claimed AS (
    INSERT INTO instrument_claims (fingerprint, identity_key, payment_id)
    SELECT n.fingerprint, c.identity_key, c.payment_id
    FROM created c JOIN n USING (payment_id)
    WHERE n.fingerprint IS NOT NULL
    ORDER BY n.fingerprint, n.position
    ON CONFLICT (fingerprint) DO NOTHING
    RETURNING payment_id
)
SELECT c.payment_id, c.case_id, c.identity_key, c.amount, c.currency, c.reserve_attempts, c.correlationid,
       c.cause_event_id, n.fingerprint,
       CASE WHEN n.fingerprint IS NULL THEN NULL ELSE cl.payment_id IS NOT NULL END AS claimed,
       (SELECT paused FROM program_state) AS paused
FROM created c JOIN n USING (payment_id) LEFT JOIN claimed cl USING (payment_id);

-- name: instrument_holders
SELECT fingerprint, identity_key FROM instrument_claims WHERE fingerprint = ANY(:fingerprints::text[]);

-- name: hold_payments!
-- Held payments that wait for another reason than budget (review, the pause).
UPDATE payments SET hold_reason = :reason, updated_at = now()
WHERE payment_id = ANY(:payment_ids::uuid[]) AND status = 'held';

-- name: program_paused$
SELECT paused FROM program_state;

-- name: refuse!
INSERT INTO refusals (case_id, reason)
SELECT unnest(:case_ids::uuid[]), :reason
ON CONFLICT (case_id) DO NOTHING;

-- name: mark_reserve_attempts!
-- One try at reserving each payment: those with a reserve id are reserved now, the others stay held.
UPDATE payments p
SET status = CASE WHEN t.reserve_id IS NULL THEN p.status ELSE 'reserved' END,
    hold_reason = CASE WHEN t.reserve_id IS NULL THEN 'budget_exhausted' END,
    reserve_id = coalesce(t.reserve_id, p.reserve_id),
    reserve_attempts = p.reserve_attempts + 1,
    updated_at = now()
FROM unnest(:payment_ids::uuid[], :reserve_ids::text[]) AS t (payment_id, reserve_id)
WHERE p.payment_id = t.payment_id;

-- name: change_payments!
-- A batch of outcomes (stipends.Change): the new status, the reason of a failure (none once
-- paid), and the method and provider reference once known.
UPDATE payments p
SET status = c.status, hold_reason = NULL, last_error = c.reason, method = coalesce(c.method, p.method),
    provider_ref = coalesce(c.provider_ref, p.provider_ref), updated_at = now()
FROM unnest(:payment_ids::uuid[], :statuses::text[], :reasons::text[], :methods::text[], :provider_refs::text[])
     AS c (payment_id, status, reason, method, provider_ref)
WHERE p.payment_id = c.payment_id;

-- name: note_payout_errors!
-- The provider could not say: the payments stay reserved and due again once their lease is released.
UPDATE payments p SET last_error = e.error, updated_at = now()
FROM unnest(:payment_ids::uuid[], :errors::text[]) AS e (payment_id, error)
WHERE p.payment_id = e.payment_id;

-- name: claim_reserved
-- Takes reserved stipends for one payout pass, in a short transaction of its own: the lease keeps
-- other passes off them while the provider is asked with no transaction open. Fewest tries first,
-- so payments the provider keeps failing cannot crowd out newer ones. `payout_attempts` counts the
-- claims; a payment claimed before may already be at the provider, so its key is looked up first.
UPDATE payments p
SET lease_id = :lease_id, leased_until = now() + make_interval(secs => :lease_seconds),
    payout_attempts = p.payout_attempts + 1, updated_at = now()
FROM (
    SELECT payment_id FROM payments
    WHERE status = 'reserved' AND (leased_until IS NULL OR leased_until < now())
      AND NOT (SELECT paused FROM program_state)  -- paused: nothing goes to the provider
    ORDER BY payout_attempts, created_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
) due, cases c LEFT JOIN case_keys k USING (case_id)
WHERE p.payment_id = due.payment_id AND c.case_id = p.case_id
RETURNING p.payment_id, p.case_id, p.amount, p.currency, p.payout_attempts - 1 AS earlier_claims,
          p.correlationid, p.cause_event_id, c.sealed, k.key_id AS case_key_id, k.wrapped AS wrapped_key;

-- name: lock_payments
-- Payments locked in one order for a short transaction that writes their outcomes: a payout pass
-- asks for those it claimed and still holds (`lease_id`), the callback worker for any (NULL).
-- FOR NO KEY UPDATE, like the UPDATE that follows: it excludes the other writer, but not the
-- foreign-key check of a callback being recorded, which never waits on these locks.
SELECT p.payment_id, p.case_id, p.identity_key, p.amount, p.currency, p.status, p.reserve_attempts,
       p.reserve_id, p.payout_attempts, p.correlationid, p.cause_event_id, p.method, p.provider_ref, c.sealed,
       k.key_id AS case_key_id, k.wrapped AS wrapped_key
FROM payments p JOIN cases c USING (case_id) LEFT JOIN case_keys k USING (case_id)
WHERE p.payment_id = ANY(:payment_ids::uuid[]) AND (:lease_id::uuid IS NULL OR p.lease_id = :lease_id::uuid)
ORDER BY p.payment_id
FOR NO KEY UPDATE OF p;

-- name: release_claims!
UPDATE payments SET lease_id = NULL, leased_until = NULL
WHERE payment_id = ANY(:payment_ids::uuid[]) AND lease_id = :lease_id;

-- name: record_callbacks
-- One insert for a whole delivery; a notification sent again is recorded once. Returns the ids
-- now on record (new or already known); ids of unknown payments are not recorded.
-- (No CTE of the arrays: joined to a CTE, the planner scanned all of payout_callbacks and payments
-- on every delivery, 53 ms a call with 95,000 rows; these are index lookups per item.)
WITH recorded AS (
    INSERT INTO payout_callbacks (notification_id, payment_id, status, provider_ref, amount, currency)
    SELECT s.notification_id, s.payment_id, s.status, s.provider_ref, s.amount, s.currency
    FROM unnest(:notification_ids::text[], :payment_ids::uuid[], :statuses::text[],
                :provider_refs::text[], :amounts::numeric[], :currencies::text[])
         AS s (notification_id, payment_id, status, provider_ref, amount, currency)
    WHERE EXISTS (SELECT 1 FROM payments p WHERE p.payment_id = s.payment_id)
    ON CONFLICT (notification_id) DO NOTHING
    RETURNING notification_id
)
SELECT notification_id FROM recorded
UNION
SELECT notification_id FROM payout_callbacks WHERE notification_id = ANY(:notification_ids::text[]);

-- name: claim_callbacks
-- Unapplied notifications, oldest first, at most one per payment per pass (a settlement is applied
-- before the return that follows it); the rows stay locked until the pass commits.
SELECT DISTINCT ON (c.payment_id) c.notification_id, c.payment_id, c.status, c.provider_ref, c.amount,
       c.currency
FROM payout_callbacks c
WHERE c.applied_at IS NULL
  AND c.notification_id IN (
      SELECT notification_id FROM payout_callbacks WHERE applied_at IS NULL
      ORDER BY received_at LIMIT :limit FOR UPDATE SKIP LOCKED
  )
ORDER BY c.payment_id, c.received_at, c.notification_id;

-- name: mark_callbacks_applied!
UPDATE payout_callbacks SET applied_at = now() WHERE notification_id = ANY(:notification_ids::text[]);

-- name: refuse_callbacks!
-- Notifications that will never be applied (their amount is not the payment's): kept, with the
-- reason, for an operator; out of the queue, so they do not hold up the payment's next one.
UPDATE payout_callbacks SET applied_at = now(), refused_reason = :reason
WHERE notification_id = ANY(:notification_ids::text[]);

-- name: unapplied_callbacks$
SELECT count(*) FROM payout_callbacks WHERE applied_at IS NULL;

-- name: held_payments
-- The oldest payments held for `reason` (budget: the release worker and top-ups; the pause: resume).
SELECT payment_id, amount FROM payments
WHERE status = 'held' AND hold_reason = :reason
ORDER BY created_at
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: disbursed_payments
SELECT payment_id, identity_key, amount, currency, provider_ref, status FROM payments
WHERE status IN ('disbursed', 'returned') ORDER BY created_at;

-- name: identities_paid_twice$
SELECT count(*) FROM (
    SELECT p.identity_key FROM payments p JOIN transfers t ON t.payment_id = p.payment_id
    WHERE t.kind = 'post_pending' GROUP BY p.identity_key HAVING count(*) > 1
) AS repeated;

-- name: waiting_payments^
-- For /metrics: stipends reserved and waiting for the provider, and held (for budget, review or the pause).
SELECT count(*) FILTER (WHERE status = 'reserved') AS reserved, count(*) FILTER (WHERE status = 'held') AS held
FROM payments WHERE status IN ('reserved', 'held');

-- name: erase_cases!
-- Erasure (services/runtime/retention.py): besides the case key, destroyed with it, the payout
-- ciphertext goes too (and with it what was sealed before case keys existed). The payments, the
-- identity key and the ledger stay.
UPDATE cases SET sealed = 'erased' WHERE case_id = ANY(:case_ids::uuid[]);
