-- name: remember_cases$
-- Keeps the cases, and says whether a withdrawal request waits for any of them (one statement: the
-- partial index of waiting requests answers it).
WITH kept AS (
    INSERT INTO cases (case_id, correlationid, destination_country, accepted_event_id, identity_key)
    SELECT * FROM unnest(:case_ids::uuid[], :correlationids::uuid[], :destination_countries::text[],
                         :accepted_event_ids::uuid[], :identity_keys::text[])
    ON CONFLICT (case_id) DO NOTHING
)
SELECT EXISTS (SELECT 1 FROM withdrawal_requests WHERE case_id = ANY(:case_ids::uuid[]) AND decision IS NULL);

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
SELECT c.case_id, c.correlationid, c.destination_country, c.identity_key,
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
-- at once, a withdrawal and a verification) is left out, so it gets no second, contradicting
-- verdict event. A verdict's attestations (none for other outcomes) are kept in the same statement
-- for the cases decided now: made before, one of a case decided elsewhere first is never kept.
WITH decided AS (
    INSERT INTO outcomes (case_id, outcome, rule)
    SELECT unnest(:case_ids::uuid[]), :outcome, unnest(:rules::text[])
    ON CONFLICT (case_id) DO NOTHING
    RETURNING case_id, decided_at
), marked AS (
    UPDATE bookings b SET decided_at = d.decided_at FROM decided d WHERE b.case_id = d.case_id
), attested AS (
    INSERT INTO attestations (case_id, key_id, token)
    SELECT a.case_id, a.key_id, a.token
    FROM unnest(:attested_case_ids::uuid[], :key_ids::text[], :tokens::text[]) AS a (case_id, key_id, token)
    JOIN decided USING (case_id)
    ON CONFLICT (case_id) DO NOTHING
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

-- name: mark_paid!
-- stipend.disbursed.v1: the verified case was paid (a later withdrawal is refused `already_paid`).
UPDATE outcomes SET paid_at = now()
WHERE case_id = ANY(:case_ids::uuid[]) AND outcome = 'verified' AND paid_at IS NULL;

-- Withdrawals (contract v1.1) ------------------------------------------------------------------

-- name: remember_withdrawal_requests
-- Returns the ids of the requests seen for the first time (a resent one is answered as before).
INSERT INTO withdrawal_requests (request_id, case_id, channel, reason, requested_at, received_at,
                                 correlationid, event_id)
SELECT * FROM unnest(:request_ids::uuid[], :case_ids::uuid[], :channels::text[], :reasons::text[],
                     :requested_ats::timestamptz[], :received_ats::timestamptz[], :correlationids::uuid[],
                     :event_ids::uuid[])
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id;

-- name: withdrawal_answers
-- Requests seen before, with their decision if they have one.
SELECT w.request_id, w.case_id, w.decision, w.booking_cancelled, w.decided_at,
       coalesce(c.correlationid, w.correlationid) AS correlationid
FROM withdrawal_requests w LEFT JOIN cases c USING (case_id)
WHERE w.request_id = ANY(:request_ids::uuid[]);

-- name: waiting_withdrawals
-- The undecided requests of the cases asked about that arrival knows, oldest first, with what
-- decides them: the case's booking (its departure) and its outcome. Locked, so that one
-- transaction decides each.
SELECT w.request_id, w.case_id, w.received_at, w.event_id, c.correlationid,
       b.scheduled_departure, o.outcome, o.paid_at
FROM withdrawal_requests w
JOIN cases c USING (case_id)
LEFT JOIN bookings b USING (case_id)
LEFT JOIN outcomes o USING (case_id)
WHERE w.case_id = ANY(:case_ids::uuid[]) AND w.decision IS NULL
ORDER BY w.received_at, w.request_id
FOR UPDATE OF w SKIP LOCKED;

-- name: outcomes_of
-- A fresh statement: sees the outcomes other transactions committed meanwhile.
SELECT case_id, outcome, paid_at FROM outcomes WHERE case_id = ANY(:case_ids::uuid[]);

-- name: record_withdrawal_decisions!
UPDATE withdrawal_requests w
SET decision = d.decision, booking_cancelled = d.booking_cancelled, decided_at = :decided_at
FROM unnest(:request_ids::uuid[], :decisions::text[], :bookings_cancelled::boolean[])
     AS d (request_id, decision, booking_cancelled)
WHERE w.request_id = d.request_id AND w.decision IS NULL;

-- name: unknown_case_withdrawals
-- Requests that waited longer than they may for their case to be known; locked so one sweeper
-- refuses each.
SELECT w.request_id, w.case_id, w.correlationid, w.event_id
FROM withdrawal_requests w
WHERE w.decision IS NULL
  AND w.received_at < now() - make_interval(secs => :wait_seconds)
  AND NOT EXISTS (SELECT 1 FROM cases c WHERE c.case_id = w.case_id)
ORDER BY w.received_at
LIMIT :limit
FOR UPDATE OF w SKIP LOCKED;
