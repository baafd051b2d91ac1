-- Payouts are claimed, called and settled in three steps, so that no transaction (and no row
-- lock) stays open while the provider is asked. A claim marks the payments of one pass with its
-- lease; only that pass may write their outcome, and a pass that dies leaves them due again when
-- the lease ends (the next pass looks their keys up at the provider before paying anything).
ALTER TABLE payments ADD COLUMN lease_id uuid;
ALTER TABLE payments ADD COLUMN leased_until timestamptz;
COMMENT ON COLUMN payments.payout_attempts IS 'Passes that claimed the payment to pay it: above 0, its key may be at the provider';

-- Payout notifications as they arrive: recorded by one insert and answered at once, so that a
-- callback never waits on a payment's row lock; the callback worker applies them in order.
CREATE TABLE payout_callbacks (
    notification_id text          PRIMARY KEY,
    payment_id      uuid          NOT NULL REFERENCES payments (payment_id),
    status          text          NOT NULL CHECK (status IN ('paid', 'declined', 'returned')),
    provider_ref    text          NOT NULL,
    amount          numeric(20,2) NOT NULL,
    currency        text          NOT NULL,
    received_at     timestamptz   NOT NULL DEFAULT now(),
    applied_at      timestamptz
);
CREATE INDEX payout_callbacks_unapplied ON payout_callbacks (received_at) WHERE applied_at IS NULL;

-- Wakes the payout worker when a stipend is reserved and the callback worker when a notification
-- arrives (delivered at commit); both also look on their own now and then.
CREATE FUNCTION notify_payouts_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.' || TG_ARGV[0], '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER payments_reserved_notify AFTER INSERT OR UPDATE OF status ON payments
    FOR EACH STATEMENT EXECUTE FUNCTION notify_payouts_due('payouts');
CREATE TRIGGER payout_callbacks_notify AFTER INSERT ON payout_callbacks
    FOR EACH STATEMENT EXECUTE FUNCTION notify_payouts_due('callbacks');
