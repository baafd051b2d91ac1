-- Contract v1.1: payments held for review, two-person approval, the program pause
-- (services/disbursement/review.py). Operator commands run these as disbursement.

-- name: held_for_review
-- Payments waiting for an operator (instrument_shared) or for resume (program_paused), oldest
-- first, with the open request on each, if any.
SELECT p.payment_id, p.case_id, p.amount, p.currency, p.hold_reason, p.created_at, p.updated_at,
       r.request_id, r.action AS requested, r.requested_by
FROM payments p
LEFT JOIN approval_requests r ON r.payment_id = p.payment_id AND r.approved_by IS NULL AND r.declined_by IS NULL
WHERE p.status = 'held' AND p.hold_reason = ANY(:reasons::text[])
ORDER BY p.created_at
LIMIT :limit;

-- name: payment_for_review^
SELECT payment_id, case_id, status, hold_reason FROM payments WHERE payment_id = :payment_id FOR UPDATE;

-- name: request_approval^
-- An operator's request; NULL where an open one exists for the same payment or reference.
INSERT INTO approval_requests (request_id, action, payment_id, amount, currency, reference, reason, requested_by)
VALUES (:request_id, :action, :payment_id, :amount, :currency, :reference, :reason, :requested_by)
ON CONFLICT DO NOTHING
RETURNING request_id, action, payment_id, amount, currency, reference, reason, requested_by, requested_at;

-- name: open_request_for^
SELECT request_id, action, requested_by FROM approval_requests
WHERE approved_by IS NULL AND declined_by IS NULL AND (payment_id = :payment_id OR reference = :reference);

-- name: open_requests
SELECT request_id, action, payment_id, amount, currency, reference, reason, requested_by, requested_at
FROM approval_requests WHERE approved_by IS NULL AND declined_by IS NULL ORDER BY requested_at LIMIT :limit;

-- name: lock_request^
SELECT request_id, action, payment_id, amount, currency, reference, reason, requested_by, requested_at,
       approved_by, approved_at, outcome, declined_by
FROM approval_requests WHERE request_id = :request_id FOR UPDATE;

-- name: approve!
-- The second operator's approval; the table's CHECK refuses an approver who is the requester.
UPDATE approval_requests SET approved_by = :approved_by, approved_at = now(), outcome = :outcome::text::jsonb
WHERE request_id = :request_id AND approved_by IS NULL AND declined_by IS NULL;

-- name: decline!
UPDATE approval_requests SET declined_by = :declined_by, declined_at = now(), decline_reason = :reason
WHERE request_id = :request_id AND approved_by IS NULL AND declined_by IS NULL;

-- name: refuse_held!
-- A held payment refused by review: failed, never paid (nothing was reserved for it).
UPDATE payments SET status = 'failed', hold_reason = NULL, last_error = :reason, updated_at = now()
WHERE payment_id = :payment_id AND status = 'held';

-- name: program_state^
SELECT paused, reason, changed_by, changed_at FROM program_state FOR UPDATE;

-- name: program_status^
SELECT paused, reason, changed_by, changed_at FROM program_state;

-- name: set_program_state!
UPDATE program_state SET paused = :paused, reason = :reason, changed_by = :changed_by, changed_at = now();
