-- name: issue_ticket^
WITH issued AS (
    INSERT INTO sandbox_tickets (idempotency_key, booking_id, carrier, flight_number, origin_airport,
                                 destination_airport, scheduled_departure, scheduled_arrival)
    VALUES (:idempotency_key, :booking_id, :carrier, :flight_number, :origin_airport,
            :destination_airport, :scheduled_departure, :scheduled_arrival)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING *
)
SELECT * FROM issued
UNION ALL
SELECT * FROM sandbox_tickets WHERE idempotency_key = :idempotency_key
LIMIT 1;
