-- Envelope encryption and erasure (services/runtime/casekeys.py, services/runtime/retention.py).

-- Each case's key for the part of its personal data this service opens, wrapped by the service's
-- program key (`key_id` names which); erasure destroys it, and the ciphertext kept with the case
-- no longer opens.
CREATE TABLE case_keys (
    case_id      uuid        PRIMARY KEY,
    key_id       text        NOT NULL,
    wrapped      text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    rewrapped_at timestamptz,
    destroyed_at timestamptz,
    CONSTRAINT case_keys_destroyed_means_gone CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);
CREATE INDEX case_keys_live_by_key ON case_keys (key_id) WHERE wrapped IS NOT NULL;

-- Cases seen to close (paid, failed, rejected at arrival, booking failed), and when their
-- personal data was erased here.
CREATE TABLE closed_cases (
    case_id   uuid        PRIMARY KEY,
    closed_by text        NOT NULL,
    closed_at timestamptz NOT NULL DEFAULT now(),
    erased_at timestamptz
);
CREATE INDEX closed_cases_not_erased ON closed_cases (closed_at) WHERE erased_at IS NULL;
