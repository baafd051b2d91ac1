-- The sandbox travel provider's own store (SQLite), loaded by aiosql's sqlite3 driver. It keeps
-- tickets, not travellers: the name a booking carries is checked and forgotten.
-- Ticket columns are always selected in the order of Ticket's fields.

-- name: create_schema#
CREATE TABLE IF NOT EXISTS tickets (
    idempotency_key TEXT PRIMARY KEY,
    booking_id TEXT NOT NULL UNIQUE,
    carrier TEXT NOT NULL,
    flight_number TEXT NOT NULL,
    origin_airport TEXT NOT NULL,
    destination_airport TEXT NOT NULL,
    scheduled_departure TEXT NOT NULL,
    scheduled_arrival TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    fare_amount TEXT,
    fare_currency TEXT
);

-- name: ticket_columns
-- A store made before fares has none: TicketStore adds the two columns.
SELECT name FROM pragma_table_info('tickets');

-- name: add_fares#
ALTER TABLE tickets ADD COLUMN fare_amount TEXT;
ALTER TABLE tickets ADD COLUMN fare_currency TEXT;

-- name: ticket^
SELECT idempotency_key, booking_id, carrier, flight_number, origin_airport, destination_airport,
       scheduled_departure, scheduled_arrival, issued_at, fare_amount, fare_currency, cancelled_at
FROM tickets WHERE idempotency_key = :key;

-- name: insert_ticket!
INSERT INTO tickets (idempotency_key, booking_id, carrier, flight_number, origin_airport, destination_airport,
                     scheduled_departure, scheduled_arrival, issued_at, fare_amount, fare_currency)
VALUES (:key, :booking_id, :carrier, :flight_number, :origin_airport, :destination_airport,
        :scheduled_departure, :scheduled_arrival, :issued_at, :fare_amount, :fare_currency);

-- name: cancellation_columns
SELECT name FROM pragma_table_info('tickets') WHERE name = 'cancelled_at';

-- name: add_cancellations#
ALTER TABLE tickets ADD COLUMN cancelled_at TEXT;

-- name: cancel!
UPDATE tickets SET cancelled_at = :cancelled_at WHERE idempotency_key = :key AND cancelled_at IS NULL;
