-- Contract v1.1. A case's one outcome (the primary key of `outcomes`) is now verified, rejected
-- or withdrawn: a withdrawal and a verification of one case both insert there, and whichever
-- commits first is the only one that ever holds. A withdrawn case is therefore never verified,
-- never attested and never paid (disbursement pays verified arrivals only); a verified case is
-- never withdrawn.
ALTER TABLE outcomes DROP CONSTRAINT outcomes_outcome_check;
ALTER TABLE outcomes ADD CONSTRAINT outcomes_outcome_check CHECK (outcome IN ('verified', 'rejected', 'withdrawn'));
-- A verified case's stipend was paid (stipend.disbursed.v1): a later withdrawal is refused
-- `already_paid` rather than `already_departed`.
ALTER TABLE outcomes ADD COLUMN paid_at timestamptz;

-- The identity key the attestation names (a keyed hash, never the document); cases accepted
-- before this migration have none and get no attestation.
ALTER TABLE cases ADD COLUMN identity_key text;

-- Every withdrawal request, by its id (a resent one is answered as the first was). A request for
-- a case arrival does not know yet waits for it (registration.accepted may come later on another
-- topic), and is refused `unknown_case` once HOMEWARD_WITHDRAWAL_CASE_WAIT_SECONDS have passed.
CREATE TABLE withdrawal_requests (
    request_id        uuid        PRIMARY KEY,
    case_id           uuid        NOT NULL,
    channel           text        NOT NULL CHECK (channel IN ('participant_app', 'partner_office')),
    reason            text        NOT NULL CHECK (reason IN ('changed_mind', 'other')),
    requested_at      timestamptz NOT NULL,
    received_at       timestamptz NOT NULL,
    correlationid     uuid        NOT NULL,
    event_id          uuid        NOT NULL,
    decision          text        CHECK (decision IN ('withdrawn', 'already_departed', 'already_paid', 'unknown_case')),
    booking_cancelled boolean,
    decided_at        timestamptz,
    CHECK ((decision IS NULL) = (decided_at IS NULL))
);
CREATE INDEX withdrawal_requests_waiting ON withdrawal_requests (case_id) WHERE decision IS NULL;

-- One departure attestation per verified case, as sent on arrival.attested.v1 (a compact JWS of
-- the case id, identity key, destination, departure date, verification time and rule).
CREATE TABLE attestations (
    case_id   uuid        PRIMARY KEY,
    key_id    text        NOT NULL,
    token     text        NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT now()
);
