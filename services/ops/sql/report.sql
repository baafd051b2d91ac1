-- `homeward report`: the program's totals, read as the operator's role (SELECT on every schema).
-- The cohort is the cases registration opened since :since (every case when it is null); the
-- budget is the program's, whatever the cohort.

-- name: applications
-- Applications by the day they came in, with the first reason of each rejection.
SELECT (received_at AT TIME ZONE 'UTC')::date AS day,
       CASE WHEN outcome_topic = 'registration.accepted.v1' THEN 'accepted'
            WHEN outcome_topic = 'registration.rejected.v1' THEN 'rejected'
            ELSE 'undecided' END AS outcome,
       outcome_data -> 'reasons' -> 0 ->> 'code' AS code,
       count(*) AS applications
FROM registration.applications
WHERE :since::timestamptz IS NULL OR received_at >= :since::timestamptz
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;

-- name: case_stages
-- Each stage's count per destination and day of acceptance. A case not yet known to arrival has
-- no destination here ('unknown').
WITH cohort AS (
    SELECT case_id, opened_at FROM registration.cases
    WHERE :since::timestamptz IS NULL OR opened_at >= :since::timestamptz
)
SELECT coalesce(a.destination_country, 'unknown') AS country,
       (k.opened_at AT TIME ZONE 'UTC')::date AS day,
       count(*) AS accepted,
       count(*) FILTER (WHERE b.status = 'booked') AS booked,
       count(*) FILTER (WHERE b.status = 'failed') AS booking_failed,
       count(*) FILTER (WHERE o.outcome = 'verified' AND o.rule = 'partner_office') AS verified_partner_office,
       count(*) FILTER (WHERE o.outcome = 'verified' AND o.rule = 'carrier_and_app') AS verified_carrier_and_app,
       count(*) FILTER (WHERE o.outcome = 'rejected') AS arrival_rejected,
       count(*) FILTER (WHERE p.status = 'disbursed') AS paid,
       coalesce(sum(p.amount) FILTER (WHERE p.status = 'disbursed'), 0) AS paid_amount,
       count(*) FILTER (WHERE p.status = 'reserved') AS pending,
       count(*) FILTER (WHERE p.status = 'held') AS held,
       count(*) FILTER (WHERE p.status IN ('failed', 'returned')) AS payment_failed,
       -- Fares in the stipend's currency only: a fare in another one is not added to it.
       count(b.fare_amount) FILTER (WHERE p.status = 'disbursed' AND b.fare_currency = p.currency) AS paid_with_fare,
       coalesce(sum(b.fare_amount) FILTER (WHERE p.status = 'disbursed' AND b.fare_currency = p.currency), 0)
           AS fares_of_paid
FROM cohort k
LEFT JOIN arrival.cases a USING (case_id)
LEFT JOIN travel.bookings b USING (case_id)
LEFT JOIN arrival.outcomes o USING (case_id)
LEFT JOIN disbursement.payments p USING (case_id)
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: payment_problems
-- Held, failed and booking-failed cases of the cohort by reason.
WITH cohort AS (
    SELECT case_id FROM registration.cases
    WHERE :since::timestamptz IS NULL OR opened_at >= :since::timestamptz
)
SELECT 'stipend ' || CASE WHEN p.status = 'returned' THEN 'failed' ELSE p.status END AS kind,
       CASE WHEN p.status = 'held' THEN :held_reason::text ELSE coalesce(p.last_error, 'unknown') END AS reason,
       count(*) AS cases
FROM cohort k JOIN disbursement.payments p USING (case_id)
WHERE p.status IN ('held', 'failed', 'returned')
GROUP BY 1, 2
UNION ALL
SELECT 'booking failed', coalesce(b.last_error, 'unknown'), count(*)
FROM cohort k JOIN travel.bookings b USING (case_id)
WHERE b.status = 'failed'
GROUP BY 1, 2
ORDER BY 1, 3 DESC;

-- name: payouts_by_day
-- Stipends paid per day of payment (a disbursed payment's last change is its payment).
SELECT (p.updated_at AT TIME ZONE 'UTC')::date AS day, count(*) AS paid, sum(p.amount) AS amount
FROM registration.cases c JOIN disbursement.payments p USING (case_id)
WHERE p.status = 'disbursed' AND (:since::timestamptz IS NULL OR c.opened_at >= :since::timestamptz)
GROUP BY 1
ORDER BY 1;

-- name: time_to_payment^
-- Seconds from acceptance (the case opened) to payment, over the cohort's paid cases.
SELECT count(*) AS paid,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM p.updated_at - c.opened_at)) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM p.updated_at - c.opened_at)) AS p95,
       min(extract(epoch FROM p.updated_at - c.opened_at)) AS fastest,
       max(extract(epoch FROM p.updated_at - c.opened_at)) AS slowest
FROM registration.cases c JOIN disbursement.payments p USING (case_id)
WHERE p.status = 'disbursed' AND (:since::timestamptz IS NULL OR c.opened_at >= :since::timestamptz);

-- name: time_to_payment_histogram
-- The same times in :buckets equal bins between the fastest and the slowest.
WITH times AS (
    SELECT extract(epoch FROM p.updated_at - c.opened_at)::double precision AS seconds
    FROM registration.cases c JOIN disbursement.payments p USING (case_id)
    WHERE p.status = 'disbursed' AND (:since::timestamptz IS NULL OR c.opened_at >= :since::timestamptz)
), bounds AS (
    SELECT min(seconds) AS low, max(seconds) AS high FROM times
)
SELECT least(width_bucket(t.seconds, b.low, b.high + 1e-6, :buckets), :buckets) AS bucket,
       count(*) AS paid, min(b.low) AS low, min(b.high) AS high
FROM times t CROSS JOIN bounds b
GROUP BY 1
ORDER BY 1;

-- name: budget^
-- The program budget account (services/disbursement/domain.py): funded is what it was credited,
-- reserved what pending stipends hold, spent what was paid.
SELECT credits_posted AS funded, debits_pending AS reserved, debits_posted AS spent,
       credits_posted - debits_posted - debits_pending AS available, currency
FROM disbursement.accounts
WHERE code = :account;
