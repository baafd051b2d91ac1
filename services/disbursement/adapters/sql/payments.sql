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

-- name: set_status!
UPDATE payments SET status = :status, updated_at = now() WHERE payment_id = :payment_id;

-- name: mark_disbursed!
UPDATE payments
SET status = 'disbursed', method = :method, provider_ref = :provider_ref, updated_at = now()
WHERE payment_id = :payment_id;

-- name: approved_payments
SELECT p.payment_id, p.case_id, p.amount, p.currency, p.correlationid, p.cause_event_id, c.sealed
FROM payments p JOIN cases c USING (case_id)
WHERE p.status = 'approved'
ORDER BY p.created_at
LIMIT :limit
FOR UPDATE OF p SKIP LOCKED;

-- name: held_payments
SELECT payment_id, amount, currency FROM payments
WHERE status = 'held'
ORDER BY created_at
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: payment_totals
SELECT status, count(*) AS payments, coalesce(sum(amount), 0) AS amount
FROM payments GROUP BY status;

-- name: mark_failed!
UPDATE payments SET status = 'failed', updated_at = now() WHERE payment_id = :payment_id;
