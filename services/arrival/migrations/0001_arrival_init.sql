-- Arrival keeps what it knows of each case, every piece of evidence (even for cases it does
-- not know yet) and one outcome per case.
CREATE TABLE cases (
    case_id             uuid        PRIMARY KEY,
    correlationid       uuid        NOT NULL,
    destination_country text        NOT NULL,
    accepted_event_id   uuid        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bookings (
    case_id             uuid        PRIMARY KEY,
    flight_number       text        NOT NULL,
    scheduled_departure timestamptz NOT NULL,
    scheduled_arrival   timestamptz NOT NULL,
    booked_event_id     uuid        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE evidence (
    evidence_id          uuid        PRIMARY KEY,
    case_id              uuid        NOT NULL,
    source               text        NOT NULL CHECK (source IN ('participant_app', 'carrier', 'partner_office')),
    observed_at          timestamptz NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    country              text        NOT NULL,
    identity_match_score double precision,
    flight_number        text,
    status               text,
    document_checked     boolean
);
CREATE INDEX evidence_by_case ON evidence (case_id);

CREATE TABLE outcomes (
    case_id    uuid        PRIMARY KEY,
    outcome    text        NOT NULL CHECK (outcome IN ('verified', 'rejected')),
    rule       text,
    decided_at timestamptz NOT NULL DEFAULT now()
);
