-- name: request_bookings!
-- A run of accepted cases, one booking request each (a case seen again changes nothing); a case
-- withdrawn before its request came is recorded withdrawn, and never booked.
INSERT INTO bookings (case_id, correlationid, cause_event_id, origin_airport, destination_airport, sealed,
                      withdrawn_at)
SELECT n.*, w.withdrawn_at
FROM unnest(:case_ids::uuid[], :correlationids::uuid[], :cause_event_ids::uuid[],
            :origin_airports::text[], :destination_airports::text[], :sealed::text[])
     AS n (case_id, correlationid, cause_event_id, origin_airport, destination_airport, sealed)
LEFT JOIN withdrawn_cases w USING (case_id)
ON CONFLICT (case_id) DO NOTHING;

-- name: withdraw
-- case.withdrawn.v1: the cases are kept withdrawn (for a booking request still to come), their
-- requests are never claimed again, and a ticket already issued is due for cancellation. Returns
-- the cases withdrawn now, each with its cancellation's state (`due`, or none without a ticket).
WITH kept AS (
    INSERT INTO withdrawn_cases (case_id) SELECT unnest(:case_ids::uuid[])
    ON CONFLICT (case_id) DO NOTHING
)
UPDATE bookings
SET withdrawn_at = now(),
    cancel_state = CASE WHEN status = 'booked' THEN 'due' END,
    cancel_next_at = CASE WHEN status = 'booked' THEN now() END,
    updated_at = now()
WHERE case_id = ANY(:case_ids::uuid[]) AND withdrawn_at IS NULL
RETURNING case_id, cancel_state;

-- name: claim_due_bookings
-- Takes the due requests for one pass, in a short transaction of its own: moving their next
-- attempt past the lease keeps other workers off them while the provider is asked, with no
-- transaction open. A worker that dies mid-pass leaves them due again when the lease ends, and
-- the idempotency key (the case id) makes the repeated request return the same ticket.
UPDATE bookings b
SET next_attempt_at = now() + make_interval(secs => :lease_seconds), lease_id = :lease_id, updated_at = now()
FROM (
    SELECT case_id FROM bookings
    WHERE status = 'pending' AND next_attempt_at <= now() AND withdrawn_at IS NULL
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
) due
LEFT JOIN case_keys k ON k.case_id = due.case_id
WHERE b.case_id = due.case_id
RETURNING b.case_id, b.correlationid, b.cause_event_id, b.origin_airport, b.destination_airport, b.sealed,
          k.key_id AS case_key_id, k.wrapped AS wrapped_key, b.attempts;

-- The outcomes below apply only to a request still pending and still held by the pass that
-- claimed it: a pass that outlived its lease changes nothing and emits nothing.

-- name: mark_booked
-- A pass's tickets in one statement; returns the cases it booked (a request the pass no longer
-- holds is left out, and emits nothing). A case withdrawn while its ticket was being issued keeps
-- the ticket, due for cancellation (`withdrawn` says so: its booking is not announced).
UPDATE bookings b
SET status = 'booked', attempts = b.attempts + 1, booking_id = ticket.booking_id,
    flight_number = ticket.flight_number, fare_amount = ticket.fare_amount,
    fare_currency = ticket.fare_currency, last_error = NULL, updated_at = now(),
    cancel_state = CASE WHEN b.withdrawn_at IS NOT NULL THEN 'due' END,
    cancel_next_at = CASE WHEN b.withdrawn_at IS NOT NULL THEN now() END
FROM unnest(:case_ids::uuid[], :booking_ids::text[], :flight_numbers::text[], :fare_amounts::numeric[],
            :fare_currencies::text[])
     AS ticket (case_id, booking_id, flight_number, fare_amount, fare_currency)
WHERE b.case_id = ticket.case_id AND b.status = 'pending' AND b.lease_id = :lease_id
RETURNING b.case_id, b.withdrawn_at IS NOT NULL AS withdrawn;

-- name: schedule_retry!
UPDATE bookings
SET attempts = attempts + 1, last_error = :error,
    next_attempt_at = now() + make_interval(secs => :delay_seconds), updated_at = now()
WHERE case_id = :case_id AND status = 'pending' AND lease_id = :lease_id;

-- name: mark_failed$
WITH failed AS (
    UPDATE bookings
    SET status = 'failed', attempts = attempts + 1, last_error = :error, updated_at = now()
    WHERE case_id = :case_id AND status = 'pending' AND lease_id = :lease_id
    RETURNING 1
)
SELECT count(*) FROM failed;

-- name: erase_cases!
-- Erasure (services/runtime/retention.py): besides the case key, destroyed with it, the traveler's
-- ciphertext goes too (and with it what was sealed before case keys existed).
UPDATE bookings SET sealed = 'erased', updated_at = now() WHERE case_id = ANY(:case_ids::uuid[]);

-- Cancellations (contract v1.1 withdrawal), worked like bookings: claimed under a lease in a
-- short transaction, asked of the provider with none open, then recorded by the pass that holds them.

-- name: claim_due_cancellations
UPDATE bookings b
SET cancel_next_at = now() + make_interval(secs => :lease_seconds), cancel_lease_id = :lease_id, updated_at = now()
FROM (
    SELECT case_id FROM bookings
    WHERE cancel_state = 'due' AND cancel_next_at <= now()
    ORDER BY cancel_next_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
) due
WHERE b.case_id = due.case_id
RETURNING b.case_id, b.correlationid, b.cause_event_id, b.booking_id, b.cancel_attempts;

-- name: record_cancellations!
-- A pass's outcomes: `cancelled`, `failed` (for good), or `due` again after `delay_seconds`.
UPDATE bookings b
SET cancel_state = o.state, cancel_attempts = b.cancel_attempts + 1, cancel_error = o.error,
    cancel_next_at = CASE WHEN o.state = 'due' THEN now() + make_interval(secs => o.delay_seconds) END,
    cancel_lease_id = NULL, updated_at = now()
FROM unnest(:case_ids::uuid[], :states::text[], :errors::text[], :delays_seconds::double precision[])
     AS o (case_id, state, error, delay_seconds)
WHERE b.case_id = o.case_id AND b.cancel_state = 'due' AND b.cancel_lease_id = :lease_id;
