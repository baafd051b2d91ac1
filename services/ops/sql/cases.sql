-- `homeward case show` and `homeward payments list`: one case's records across the four services,
-- read as the operator's role (SELECT on every schema). Nothing here reads a sealed value.

-- name: case_named^
-- The case an id names, as a case id or as its application's id.
SELECT case_id, application_id, opened_at, consent_version, consented_at
FROM registration.cases
WHERE case_id = :id OR application_id = :id;

-- name: application^
SELECT application_id, correlationid, received_at, decided_at, outcome_topic, outcome_data::text AS outcome_data
FROM registration.applications
WHERE application_id = :id;

-- name: known_elsewhere^
-- A case registration does not name that another service knows (evidence that came for a case
-- id registration never opened, say).
SELECT case_id FROM travel.bookings WHERE case_id = :id
UNION SELECT case_id FROM arrival.cases WHERE case_id = :id
UNION SELECT case_id FROM arrival.evidence WHERE case_id = :id
UNION SELECT case_id FROM disbursement.cases WHERE case_id = :id;

-- name: events_about
-- What the four services published about the case (their outboxes hold each event until it is
-- past the outbox retention), oldest first. Dead-letter copies are not events: they are left out.
SELECT service, topic, event_id, created_at, sent_at, parked_at, value
FROM (
    SELECT 'registration' AS service, topic, event_id, created_at, sent_at, parked_at, value
    FROM registration.outbox WHERE key = ANY(:keys::text[]) AND NOT dead_letter
    UNION ALL
    SELECT 'travel', topic, event_id, created_at, sent_at, parked_at, value
    FROM travel.outbox WHERE key = ANY(:keys::text[]) AND NOT dead_letter
    UNION ALL
    SELECT 'arrival', topic, event_id, created_at, sent_at, parked_at, value
    FROM arrival.outbox WHERE key = ANY(:keys::text[]) AND NOT dead_letter
    UNION ALL
    SELECT 'disbursement', topic, event_id, created_at, sent_at, parked_at, value
    FROM disbursement.outbox WHERE key = ANY(:keys::text[]) AND NOT dead_letter
) published
ORDER BY created_at
LIMIT :limit;

-- name: booking^
SELECT status, attempts, last_error, booking_id, flight_number, origin_airport, destination_airport,
       fare_amount, fare_currency, created_at, updated_at, next_attempt_at
FROM travel.bookings
WHERE case_id = :case_id;

-- name: arrival_facts^
-- What arrival knows of the case: its destination, its flight, and its verdict if it has one.
SELECT c.destination_country, c.created_at AS known_at, b.flight_number, b.scheduled_departure,
       b.scheduled_arrival, o.outcome, o.rule, o.decided_at
FROM arrival.cases c
LEFT JOIN arrival.bookings b USING (case_id)
LEFT JOIN arrival.outcomes o USING (case_id)
WHERE c.case_id = :case_id;

-- name: evidence
SELECT evidence_id, source, observed_at, received_at, country, identity_match_score, flight_number,
       status, document_checked
FROM arrival.evidence
WHERE case_id = :case_id
ORDER BY received_at, evidence_id
LIMIT :limit;

-- name: payment^
SELECT payment_id, amount, currency, status, reserve_attempts, payout_attempts, last_error, method,
       created_at, updated_at
FROM disbursement.payments
WHERE case_id = :case_id;

-- name: payment_refusal^
-- A verified case disbursement would not pay (its identity was paid already).
SELECT reason, created_at FROM disbursement.refusals WHERE case_id = :case_id;

-- name: transfers
SELECT seq, transfer_id, kind, debit_account, credit_account, amount, currency, created_at
FROM disbursement.transfers
WHERE payment_id = :payment_id
ORDER BY seq
LIMIT :limit;

-- name: callbacks
SELECT notification_id, status, amount, currency, received_at, applied_at, refused_reason
FROM disbursement.payout_callbacks
WHERE payment_id = :payment_id
ORDER BY received_at
LIMIT :limit;

-- name: progress
-- Each service's re-drive record of the case: how often its events were sent again, and when
-- the case closed there.
SELECT 'registration' AS service, opened_at, progressed_at, redrives, closed_at
FROM registration.open_cases WHERE case_key = ANY(:keys::text[])
UNION ALL
SELECT 'travel', opened_at, progressed_at, redrives, closed_at FROM travel.open_cases WHERE case_key = ANY(:keys::text[])
UNION ALL
SELECT 'arrival', opened_at, progressed_at, redrives, closed_at FROM arrival.open_cases WHERE case_key = ANY(:keys::text[])
UNION ALL
SELECT 'disbursement', opened_at, progressed_at, redrives, closed_at
FROM disbursement.open_cases WHERE case_key = ANY(:keys::text[]);

-- name: erasure
-- Where the case's personal data is kept and whether it was erased (services/runtime/retention.py).
SELECT 'registration' AS service, closed_by, closed_at, erased_at FROM registration.closed_cases WHERE case_id = :case_id
UNION ALL
SELECT 'travel', closed_by, closed_at, erased_at FROM travel.closed_cases WHERE case_id = :case_id
UNION ALL
SELECT 'disbursement', closed_by, closed_at, erased_at FROM disbursement.closed_cases WHERE case_id = :case_id;

-- name: payments
-- `homeward payments list`: oldest first, with the reason a held, failed or stuck one gives.
SELECT payment_id, case_id, status, amount, currency, created_at, updated_at, last_error,
       reserve_attempts, payout_attempts
FROM disbursement.payments
WHERE (:statuses::text[] IS NULL OR status = ANY(:statuses::text[]))
  AND (:reason::text IS NULL OR last_error = :reason::text OR (status = 'held' AND :reason::text = :held_reason::text))
ORDER BY created_at, payment_id
LIMIT :limit;
