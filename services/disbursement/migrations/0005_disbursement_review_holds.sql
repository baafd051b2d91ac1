-- Contract v1.1: payments held for review, two-person approval and a program pause.
--
-- Each case's payout instrument as a fingerprint: a keyed hash (HMAC-SHA256 under the program's
-- instrument secret, naming its key id) of the normalized mobile number or bank code and account
-- number; never the instrument itself. The first payment of an instrument claims it, by the
-- primary key, in the transaction that creates the payment: a payment of another identity with the
-- same fingerprint is held `instrument_shared`, whichever of two concurrent ones commits second.
ALTER TABLE cases ADD COLUMN instrument_fingerprint text;
CREATE TABLE instrument_claims (
    fingerprint  text        PRIMARY KEY,
    identity_key text        NOT NULL,
    payment_id   uuid        NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now()
);

-- Why a held payment waits: for budget (released by the release worker and top-ups), for review
-- (released or refused by two operators), or because the program is paused (released by resume).
ALTER TABLE payments ADD COLUMN hold_reason text
    CHECK (hold_reason IN ('budget_exhausted', 'instrument_shared', 'program_paused'));
UPDATE payments SET hold_reason = 'budget_exhausted' WHERE status = 'held';
ALTER TABLE payments ADD CONSTRAINT payments_held_for_a_reason CHECK ((status = 'held') = (hold_reason IS NOT NULL));

-- Two-person approval: one operator requests, another approves; the CHECK is the rule itself.
CREATE TABLE approval_requests (
    request_id   uuid          PRIMARY KEY,
    action       text          NOT NULL CHECK (action IN ('release', 'refuse', 'fund')),
    payment_id   uuid          REFERENCES payments (payment_id),
    amount       numeric(20,2) CHECK (amount > 0),
    currency     text,
    reference    text,
    reason       text,
    requested_by text          NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 100),
    requested_at timestamptz   NOT NULL DEFAULT now(),
    approved_by  text          CHECK (length(approved_by) BETWEEN 1 AND 100),
    approved_at  timestamptz,
    outcome      jsonb,
    -- A request nobody should carry out is declined instead (by anyone, its requester too: no
    -- money moves); it is then closed, as an approved one is.
    declined_by  text          CHECK (length(declined_by) BETWEEN 1 AND 100),
    declined_at  timestamptz,
    decline_reason text,
    CHECK ((approved_by IS NULL) = (approved_at IS NULL)),
    CHECK ((declined_by IS NULL) = (declined_at IS NULL)),
    CHECK (approved_by IS NULL OR declined_by IS NULL),
    CHECK (approved_by IS NULL OR approved_by <> requested_by),
    CHECK ((action = 'fund') = (amount IS NOT NULL AND currency IS NOT NULL AND reference IS NOT NULL)),
    CHECK ((action = 'fund') = (payment_id IS NULL)),
    CHECK (action <> 'refuse' OR reason IS NOT NULL)
);
-- One open request per held payment, and per top-up reference.
CREATE UNIQUE INDEX approval_requests_open_per_payment ON approval_requests (payment_id)
    WHERE approved_by IS NULL AND declined_by IS NULL AND payment_id IS NOT NULL;
CREATE UNIQUE INDEX approval_requests_open_per_reference ON approval_requests (reference)
    WHERE approved_by IS NULL AND declined_by IS NULL AND reference IS NOT NULL;

-- The program pause: while paused, payments that become due are held `program_paused` and the
-- payout worker sends nothing to the provider.
CREATE TABLE program_state (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    paused     boolean     NOT NULL DEFAULT false,
    reason     text,
    changed_by text,
    changed_at timestamptz
);
INSERT INTO program_state DEFAULT VALUES;
