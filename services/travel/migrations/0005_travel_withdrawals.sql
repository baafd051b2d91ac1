-- Contract v1.1 withdrawal: a withdrawn case is never booked, and a ticket it has is cancelled at
-- the provider, retried with backoff like a booking. `withdrawn_cases` keeps the withdrawal even
-- when it comes before the case's booking request (registration.accepted on another topic).
CREATE TABLE withdrawn_cases (
    case_id       uuid        PRIMARY KEY,
    withdrawn_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE bookings ADD COLUMN withdrawn_at timestamptz;
-- due: the ticket is to be cancelled; cancelled: the provider cancelled it; failed: it could not
-- be (its flight had left, or the provider refused) and an operator has to look.
ALTER TABLE bookings ADD COLUMN cancel_state text CHECK (cancel_state IN ('due', 'cancelled', 'failed'));
ALTER TABLE bookings ADD COLUMN cancel_attempts integer NOT NULL DEFAULT 0 CHECK (cancel_attempts >= 0);
ALTER TABLE bookings ADD COLUMN cancel_next_at timestamptz;
ALTER TABLE bookings ADD COLUMN cancel_lease_id uuid;
ALTER TABLE bookings ADD COLUMN cancel_error text;
ALTER TABLE bookings ADD CONSTRAINT bookings_cancelled_when_withdrawn CHECK (cancel_state IS NULL OR withdrawn_at IS NOT NULL);
CREATE INDEX bookings_cancel_due ON bookings (cancel_next_at) WHERE cancel_state = 'due';
