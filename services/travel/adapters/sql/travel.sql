-- name: request_booking!
INSERT INTO bookings (case_id, correlationid, cause_event_id, origin_airport, destination_airport, sealed)
VALUES (:case_id, :correlationid, :cause_event_id, :origin_airport, :destination_airport, :sealed)
ON CONFLICT (case_id) DO NOTHING;

-- name: due_bookings
-- Locks the due requests so that two workers never book the same case at once.
SELECT case_id, correlationid, cause_event_id, origin_airport, destination_airport, sealed, attempts
FROM bookings
WHERE status = 'pending' AND next_attempt_at <= now()
ORDER BY next_attempt_at
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: mark_booked!
UPDATE bookings
SET status = 'booked', attempts = attempts + 1, booking_id = :booking_id,
    flight_number = :flight_number, last_error = NULL, updated_at = now()
WHERE case_id = :case_id;

-- name: schedule_retry!
UPDATE bookings
SET attempts = attempts + 1, last_error = :error,
    next_attempt_at = now() + make_interval(secs => :delay_seconds), updated_at = now()
WHERE case_id = :case_id;

-- name: mark_failed!
UPDATE bookings
SET status = 'failed', attempts = attempts + 1, last_error = :error, updated_at = now()
WHERE case_id = :case_id;
