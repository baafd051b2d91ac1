-- name: remember_case!
INSERT INTO cases (case_id, identity_key, correlationid, sealed, accepted_event_id)
VALUES (:case_id, :identity_key, :correlationid, :sealed, :accepted_event_id)
ON CONFLICT (case_id) DO NOTHING;

-- name: remember_verified!
INSERT INTO verified_arrivals (case_id, verified_event_id)
VALUES (:case_id, :verified_event_id)
ON CONFLICT (case_id) DO NOTHING;

-- name: payable_case^
-- A case that is accepted and verified and has neither a payment nor a refusal yet.
SELECT c.case_id, c.identity_key, c.correlationid, v.verified_event_id
FROM cases c
JOIN verified_arrivals v USING (case_id)
WHERE c.case_id = :case_id
  AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.case_id = c.case_id)
  AND NOT EXISTS (SELECT 1 FROM refusals r WHERE r.case_id = c.case_id);

-- name: create_payment<!
-- Returns a row only if this identity has never had a payment.
INSERT INTO payments (payment_id, case_id, identity_key, amount, currency, status, correlationid, cause_event_id)
VALUES (:payment_id, :case_id, :identity_key, :amount, :currency, 'held', :correlationid, :cause_event_id)
ON CONFLICT DO NOTHING
RETURNING payment_id;

-- name: refuse!
INSERT INTO refusals (case_id, reason) VALUES (:case_id, :reason) ON CONFLICT (case_id) DO NOTHING;

-- name: lock_payment^
SELECT p.payment_id, p.case_id, p.identity_key, p.amount, p.currency, p.status, p.reserve_attempts,
       p.reserve_id, p.payout_attempts, p.correlationid, p.cause_event_id, p.method, p.provider_ref, c.sealed
FROM payments p JOIN cases c USING (case_id)
WHERE p.payment_id = :payment_id
FOR UPDATE OF p;

-- name: mark_reserved!
UPDATE payments
SET status = 'reserved', reserve_id = :reserve_id, reserve_attempts = reserve_attempts + 1, updated_at = now()
WHERE payment_id = :payment_id;

-- name: count_reserve_attempt!
UPDATE payments SET reserve_attempts = reserve_attempts + 1, updated_at = now() WHERE payment_id = :payment_id;

-- name: mark_disbursed!
UPDATE payments
SET status = 'disbursed', method = :method, provider_ref = :provider_ref, last_error = NULL, updated_at = now()
WHERE payment_id = :payment_id;

-- name: mark_status!
UPDATE payments SET status = :status, last_error = :reason, updated_at = now() WHERE payment_id = :payment_id;

-- name: count_payout_attempt!
UPDATE payments
SET payout_attempts = payout_attempts + 1, last_error = :error, updated_at = now()
WHERE payment_id = :payment_id;

-- name: reserved_payments
-- Fewest tries first, so payments the provider keeps failing cannot crowd out newer ones.
SELECT payment_id FROM payments
WHERE status = 'reserved'
ORDER BY payout_attempts, created_at
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: held_payments
SELECT payment_id, amount FROM payments
WHERE status = 'held'
ORDER BY created_at
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: payment_totals
SELECT status, count(*) AS payments, coalesce(sum(amount), 0) AS amount
FROM payments GROUP BY status ORDER BY status;

-- name: disbursed_payments
SELECT payment_id, identity_key, amount, currency, provider_ref, status FROM payments
WHERE status IN ('disbursed', 'returned') ORDER BY created_at;

-- name: identities_paid_twice$
SELECT count(*) FROM (
    SELECT p.identity_key FROM payments p JOIN transfers t ON t.payment_id = p.payment_id
    WHERE t.kind = 'post_pending' GROUP BY p.identity_key HAVING count(*) > 1
) AS repeated;

-- name: waiting_payments^
-- For /metrics: stipends reserved and waiting for the provider, and held until the budget is topped up.
SELECT count(*) FILTER (WHERE status = 'reserved') AS reserved, count(*) FILTER (WHERE status = 'held') AS held
FROM payments WHERE status IN ('reserved', 'held');
