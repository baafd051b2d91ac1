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

-- name: decide
-- Records the verdicts of cases not decided yet and marks their bookings decided; returns the cases
-- this call decided. A case another transaction decided first (the sweeper and an evidence batch
-- at once) is left out, so it gets no second, contradicting verdict event.
WITH decided AS (
    INSERT INTO outcomes (case_id, outcome, rule)
    SELECT unnest(:case_ids::uuid[]), :outcome, unnest(:rules::text[])
    ON CONFLICT (case_id) DO NOTHING
    RETURNING case_id, decided_at
), marked AS (
    UPDATE bookings b SET decided_at = d.decided_at FROM decided d WHERE b.case_id = d.case_id
)
SELECT case_id FROM decided;

-- name: expired_cases
-- Undecided bookings past their evidence window (the partial index holds only undecided ones);
-- locked so one sweeper takes each.
SELECT c.case_id, c.correlationid, b.booked_event_id
FROM bookings b
JOIN cases c USING (case_id)
WHERE b.decided_at IS NULL
  AND b.scheduled_arrival < now() - make_interval(secs => :window_seconds)
ORDER BY b.scheduled_arrival
LIMIT :limit
FOR UPDATE OF b SKIP LOCKED;
