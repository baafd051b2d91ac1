-- Travel keeps one booking request per case and works it until a ticket is issued or it gives up.
CREATE TABLE bookings (
    case_id             uuid        PRIMARY KEY,
    correlationid       uuid        NOT NULL,
    cause_event_id      uuid        NOT NULL,
    origin_airport      text        NOT NULL,
    destination_airport text        NOT NULL,
    sealed              text        NOT NULL,
    status              text        NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'booked', 'failed')),
    attempts            integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    last_error          text,
    booking_id          text,
    flight_number       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bookings_due ON bookings (next_attempt_at) WHERE status = 'pending';

-- The sandbox travel provider's own store: what a remote provider would keep on its side.
CREATE TABLE sandbox_tickets (
    idempotency_key     text        PRIMARY KEY,
    booking_id          text        NOT NULL UNIQUE,
    carrier             text        NOT NULL,
    flight_number       text        NOT NULL,
    origin_airport      text        NOT NULL,
    destination_airport text        NOT NULL,
    scheduled_departure timestamptz NOT NULL,
    scheduled_arrival   timestamptz NOT NULL,
    issued_at           timestamptz NOT NULL DEFAULT now()
);
