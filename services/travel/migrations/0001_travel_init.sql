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
