-- name: remember_cases!
INSERT INTO cases (case_id, correlationid, destination_country, accepted_event_id)
SELECT * FROM unnest(:case_ids::uuid[], :correlationids::uuid[], :destination_countries::text[],
                     :accepted_event_ids::uuid[])
ON CONFLICT (case_id) DO NOTHING;

-- name: remember_bookings!
INSERT INTO bookings (case_id, flight_number, scheduled_departure, scheduled_arrival, booked_event_id)
SELECT * FROM unnest(:case_ids::uuid[], :flight_numbers::text[], :scheduled_departures::timestamptz[],
                     :scheduled_arrivals::timestamptz[], :booked_event_ids::uuid[])
ON CONFLICT (case_id) DO NOTHING;

-- name: remember_evidence
-- Returns the ids of the evidence that is new: a duplicate (again, or twice in the run) counts once.
INSERT INTO evidence (evidence_id, case_id, source, observed_at, country, identity_match_score,
                      flight_number, status, document_checked)
SELECT * FROM unnest(:evidence_ids::uuid[], :case_ids::uuid[], :sources::text[], :observed_ats::timestamptz[],
                     :countries::text[], :identity_match_scores::double precision[], :flight_numbers::text[],
                     :statuses::text[], :documents_checked::boolean[])
ON CONFLICT (evidence_id) DO NOTHING
RETURNING evidence_id;

-- name: undecided_cases
-- The cases and their bookings, only where both are known and no outcome was given yet.
SELECT c.case_id, c.correlationid, c.destination_country,
       b.flight_number, b.scheduled_departure, b.scheduled_arrival
FROM cases c
JOIN bookings b USING (case_id)
LEFT JOIN outcomes o USING (case_id)
WHERE c.case_id = ANY(:case_ids::uuid[]) AND o.case_id IS NULL;

-- name: evidence_for_cases
SELECT case_id, evidence_id, source, observed_at, received_at, country, identity_match_score,
       flight_number, status, document_checked
FROM evidence
WHERE case_id = ANY(:case_ids::uuid[]);

-- name: decide!
INSERT INTO outcomes (case_id, outcome, rule)
SELECT unnest(:case_ids::uuid[]), :outcome, unnest(:rules::text[])
ON CONFLICT (case_id) DO NOTHING;

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
