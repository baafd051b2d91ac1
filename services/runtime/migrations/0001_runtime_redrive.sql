-- Cases whose events this service must keep re-publishing until a downstream service shows it
-- acted on them: what makes a lost message (or a wiped broker) strand no case.
CREATE TABLE open_cases (
    case_key      text        PRIMARY KEY,
    opened_at     timestamptz NOT NULL DEFAULT now(),
    progressed_at timestamptz NOT NULL DEFAULT now(),
    redrives      integer     NOT NULL DEFAULT 0,
    closed_at     timestamptz
);
CREATE INDEX open_cases_stalled ON open_cases (progressed_at) WHERE closed_at IS NULL;
CREATE INDEX outbox_by_key ON outbox (key);

-- An outbox row the broker refuses for good (e.g. larger than it accepts) is parked, with the
-- reason, instead of blocking every row behind it; operators see it in the logs and here.
ALTER TABLE outbox ADD COLUMN parked_at timestamptz, ADD COLUMN park_reason text;
