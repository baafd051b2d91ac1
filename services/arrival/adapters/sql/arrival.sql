-- name: remember_case!
INSERT INTO cases (case_id, correlationid, destination_country, accepted_event_id)
VALUES (:case_id, :correlationid, :destination_country, :accepted_event_id)
ON CONFLICT (case_id) DO NOTHING;

-- name: remember_booking!
INSERT INTO bookings (case_id, flight_number, scheduled_departure, scheduled_arrival, booked_event_id)
VALUES (:case_id, :flight_number, :scheduled_departure, :scheduled_arrival, :booked_event_id)
ON CONFLICT (case_id) DO NOTHING;

-- name: remember_evidence<!
-- Returns the id only when the evidence is new: a duplicate counts once.
INSERT INTO evidence (evidence_id, case_id, source, observed_at, country, identity_match_score,
                      flight_number, status, document_checked)
VALUES (:evidence_id, :case_id, :source, :observed_at, :country, :identity_match_score,
        :flight_number, :status, :document_checked)
ON CONFLICT (evidence_id) DO NOTHING
RETURNING evidence_id;

-- name: undecided_case^
-- The case and its booking, only when both are known and no outcome was given yet.
SELECT c.case_id, c.correlationid, c.destination_country,
       b.flight_number, b.scheduled_departure, b.scheduled_arrival
FROM cases c
JOIN bookings b USING (case_id)
LEFT JOIN outcomes o USING (case_id)
WHERE c.case_id = :case_id AND o.case_id IS NULL;

-- name: evidence_for_case
SELECT evidence_id, source, observed_at, received_at, country, identity_match_score,
       flight_number, status, document_checked
FROM evidence
WHERE case_id = :case_id;

-- name: decide<!
INSERT INTO outcomes (case_id, outcome, rule)
VALUES (:case_id, :outcome, :rule)
ON CONFLICT (case_id) DO NOTHING
RETURNING case_id;

-- name: expired_cases
-- Booked cases past their evidence window with no outcome; locked so one sweeper takes each.
SELECT c.case_id, c.correlationid, b.booked_event_id
FROM cases c
JOIN bookings b USING (case_id)
LEFT JOIN outcomes o USING (case_id)
WHERE o.case_id IS NULL
  AND b.scheduled_arrival + make_interval(secs => :window_seconds) < now()
ORDER BY b.scheduled_arrival
LIMIT :limit
FOR UPDATE OF c SKIP LOCKED;
