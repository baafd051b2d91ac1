-- Disbursement: cases it may pay, verified arrivals, a double-entry ledger and one payment
-- per identity, ever. The constraints below are the money rules; code only follows them.

CREATE TABLE cases (
    case_id           uuid        PRIMARY KEY,
    identity_key      text        NOT NULL,
    correlationid     uuid        NOT NULL,
    sealed            text        NOT NULL,
    accepted_event_id uuid        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE verified_arrivals (
    case_id           uuid        PRIMARY KEY,
    verified_event_id uuid        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- The ledger, after TigerBeetle: every account keeps pending and posted debits and credits;
-- an account flagged `debits_must_not_exceed_credits` (the program budget) can never spend
-- more than it was credited, counting reservations. The CHECK is the rule itself.
CREATE TABLE accounts (
    code                           text          PRIMARY KEY,
    currency                       text          NOT NULL,
    debits_must_not_exceed_credits boolean       NOT NULL DEFAULT false,
    debits_pending                 numeric(20,2) NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted                  numeric(20,2) NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending                numeric(20,2) NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted                 numeric(20,2) NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    CHECK (NOT debits_must_not_exceed_credits OR debits_pending + debits_posted <= credits_posted)
);

-- The journal: append-only, each row chained to the one before by a SHA-256 hash.
-- A transfer id is its idempotency key. A pending transfer is posted or voided at most once:
-- the unique index on pending_id lets exactly one of two concurrent resolutions win.
CREATE TABLE transfers (
    seq            bigint        PRIMARY KEY,
    transfer_id    text          NOT NULL UNIQUE,
    kind           text          NOT NULL CHECK (kind IN ('single_phase', 'pending', 'post_pending', 'void_pending')),
    debit_account  text          NOT NULL REFERENCES accounts (code),
    credit_account text          NOT NULL REFERENCES accounts (code),
    amount         numeric(20,2) NOT NULL CHECK (amount > 0),
    currency       text          NOT NULL,
    pending_id     text          REFERENCES transfers (transfer_id),
    payment_id     uuid,
    created_at     timestamptz   NOT NULL DEFAULT now(),
    prev_hash      text          NOT NULL,
    hash           text          NOT NULL UNIQUE,
    CHECK (debit_account <> credit_account),
    CHECK ((kind IN ('post_pending', 'void_pending')) = (pending_id IS NOT NULL))
);
CREATE UNIQUE INDEX transfers_resolved_once ON transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX transfers_by_payment ON transfers (payment_id) WHERE payment_id IS NOT NULL;

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger journal rows are append-only; post a reversing transfer instead';
END $$;
CREATE TRIGGER transfers_append_only BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- The head of the hash chain; updating it serialises journal appends.
CREATE TABLE ledger_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint  NOT NULL,
    hash      text    NOT NULL
);
INSERT INTO ledger_head (seq, hash) VALUES (0, 'genesis');

-- Transfers refused for a state reason (e.g. not enough budget): the same id keeps failing
-- the same way instead of succeeding later under changed conditions.
CREATE TABLE transfer_refusals (
    transfer_id text        PRIMARY KEY,
    code        text        NOT NULL,
    request     jsonb       NOT NULL,
    refused_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments (
    payment_id       uuid          PRIMARY KEY,
    case_id          uuid          NOT NULL UNIQUE,
    -- At most one stipend per person, ever: the rule is this constraint.
    identity_key     text          NOT NULL UNIQUE,
    amount           numeric(20,2) NOT NULL CHECK (amount > 0),
    currency         text          NOT NULL,
    -- held: waiting for budget; reserved: pending transfer holds the money; disbursed: posted;
    -- failed: voided (declined or unpayable); returned: paid, then reversed.
    status           text          NOT NULL CHECK (status IN ('held', 'reserved', 'disbursed', 'failed', 'returned')),
    reserve_attempts integer       NOT NULL DEFAULT 0,
    reserve_id       text,
    payout_attempts  integer       NOT NULL DEFAULT 0,
    last_error       text,
    correlationid    uuid          NOT NULL,
    cause_event_id   uuid          NOT NULL,
    method           text,
    provider_ref     text,
    created_at       timestamptz   NOT NULL DEFAULT now(),
    updated_at       timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX payments_reserved ON payments (created_at) WHERE status = 'reserved';
CREATE INDEX payments_held ON payments (created_at) WHERE status = 'held';

-- Cases refused a stipend because their identity was already paid under another case.
CREATE TABLE refusals (
    case_id    uuid        PRIMARY KEY,
    reason     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
