-- Registration keeps applications, cases and the identity claims that de-duplicate people.
-- Personal data is stored only sealed (AES-256-GCM); identities only as HMAC keys.

CREATE TABLE applications (
    application_id uuid        PRIMARY KEY,
    correlationid  uuid        NOT NULL,
    outcome_topic  text,
    outcome_data   jsonb,
    received_at    timestamptz NOT NULL DEFAULT now(),
    decided_at     timestamptz
);

CREATE TABLE cases (
    case_id        uuid        PRIMARY KEY,
    application_id uuid        NOT NULL UNIQUE REFERENCES applications (application_id),
    identity_key   text        NOT NULL UNIQUE,
    sealed         text        NOT NULL,
    opened_at      timestamptz NOT NULL DEFAULT now()
);

-- One case per person, ever: the unique key is the de-duplication rule itself.
CREATE TABLE identity_claims (
    identity_key text        PRIMARY KEY,
    case_id      uuid        NOT NULL UNIQUE,
    claimed_at   timestamptz NOT NULL DEFAULT now()
);
