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

-- Accounts hold a balance; only the funding source may go below zero, so the budget
-- can never be overdrawn whatever the code does.
CREATE TABLE accounts (
    code           text          PRIMARY KEY,
    currency       text          NOT NULL,
    balance        numeric(20,2) NOT NULL DEFAULT 0,
    allow_negative boolean       NOT NULL DEFAULT false,
    CHECK (allow_negative OR balance >= 0)
);

-- Every movement of money: from one account to another, same amount, append-only.
CREATE TABLE transfers (
    transfer_id  text          PRIMARY KEY,
    from_account text          NOT NULL REFERENCES accounts (code),
    to_account   text          NOT NULL REFERENCES accounts (code),
    amount       numeric(20,2) NOT NULL CHECK (amount > 0),
    currency     text          NOT NULL,
    payment_id   uuid,
    created_at   timestamptz   NOT NULL DEFAULT now(),
    CHECK (from_account <> to_account)
);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'transfers are append-only; post a reversing transfer instead';
END $$;
CREATE TRIGGER transfers_append_only BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TABLE payments (
    payment_id    uuid          PRIMARY KEY,
    case_id       uuid          NOT NULL UNIQUE,
    -- At most one stipend per person, ever: the rule is this constraint.
    identity_key  text          NOT NULL UNIQUE,
    amount        numeric(20,2) NOT NULL CHECK (amount > 0),
    currency      text          NOT NULL,
    status        text          NOT NULL CHECK (status IN ('held', 'approved', 'disbursed', 'failed')),
    correlationid uuid          NOT NULL,
    cause_event_id uuid         NOT NULL,
    method        text,
    provider_ref  text,
    created_at    timestamptz   NOT NULL DEFAULT now(),
    updated_at    timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX payments_approved ON payments (created_at) WHERE status = 'approved';
CREATE INDEX payments_held ON payments (created_at) WHERE status = 'held';

-- Cases refused a stipend because their identity was already paid under another case.
CREATE TABLE refusals (
    case_id    uuid        PRIMARY KEY,
    reason     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The sandbox payout provider's own store: what a remote provider keeps on its side.
CREATE TABLE sandbox_payouts (
    idempotency_key text          PRIMARY KEY,
    provider_ref    text          NOT NULL UNIQUE,
    amount          numeric(20,2) NOT NULL,
    currency        text          NOT NULL,
    method          text          NOT NULL,
    created_at      timestamptz   NOT NULL DEFAULT now()
);
