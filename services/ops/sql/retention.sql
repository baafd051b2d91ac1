-- `homeward retention backfill`: cases that closed before the services noted closings
-- (closed_cases, runtime migration 0006), from the records each closing left, with its time.

-- name: closings_before
-- Every closing the services' records show, with its time and the topic that announced it; read
-- as the operator's role, which reads every schema. Each holder takes the kinds its retention
-- counts from (services/runtime/retention.py: `Retention.decides` and `consumes`).
SELECT case_id, 'stipend.disbursed.v1' AS closed_by, updated_at AS closed_at
FROM disbursement.payments WHERE status IN ('disbursed', 'returned')
UNION ALL
SELECT case_id, 'stipend.failed.v1', updated_at FROM disbursement.payments WHERE status = 'failed'
UNION ALL
SELECT case_id, 'arrival.rejected.v1', decided_at FROM arrival.outcomes WHERE outcome = 'rejected'
UNION ALL
SELECT case_id, 'travel.booking_failed.v1', updated_at FROM travel.bookings WHERE status = 'failed'
UNION ALL
SELECT case_id, 'travel.booked.v1', updated_at FROM travel.bookings WHERE status = 'booked';

-- name: note_closed_before!
-- As each service's own role, in its schema; a case noted already keeps its first closing.
INSERT INTO closed_cases (case_id, closed_by, closed_at)
SELECT * FROM unnest(:case_ids::uuid[], :topics::text[], :closed_ats::timestamptz[])
ON CONFLICT (case_id) DO NOTHING;
