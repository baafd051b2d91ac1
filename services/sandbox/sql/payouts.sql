-- The sandbox payout provider's own store (SQLite), loaded by aiosql's sqlite3 driver.
-- Payout columns are always selected in the order of StoredPayout's fields.

-- name: create_schema#
CREATE TABLE IF NOT EXISTS payouts (
    idempotency_key TEXT PRIMARY KEY,
    provider_ref TEXT NOT NULL UNIQUE,
    body_hash TEXT NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    method TEXT NOT NULL,
    reference TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('paid', 'declined', 'returned')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    return_due_at REAL
);
CREATE INDEX IF NOT EXISTS payouts_created_at ON payouts (created_at);
CREATE INDEX IF NOT EXISTS payouts_return_due_at ON payouts (return_due_at) WHERE return_due_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT PRIMARY KEY,
    payout_key TEXT NOT NULL REFERENCES payouts (idempotency_key),
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sent_at TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_attempt_at) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS notifications_payout_key ON notifications (payout_key);

-- name: payout^
SELECT idempotency_key, provider_ref, body_hash, amount, currency, method, reference, status, created_at, updated_at
FROM payouts WHERE idempotency_key = :key;

-- name: insert_payout!
INSERT INTO payouts (idempotency_key, provider_ref, body_hash, amount, currency, method, reference, status,
                     created_at, updated_at, return_due_at)
VALUES (:key, :provider_ref, :body_hash, :amount, :currency, :method, :reference, :status,
        :created_at, :created_at, :return_due_at);

-- name: list_payouts
SELECT idempotency_key, provider_ref, body_hash, amount, currency, method, reference, status, created_at, updated_at
FROM payouts WHERE :status IS NULL OR status = :status
ORDER BY created_at, rowid LIMIT :limit;

-- name: due_returns
SELECT idempotency_key FROM payouts
WHERE status = 'paid' AND return_due_at IS NOT NULL AND return_due_at <= :now
ORDER BY return_due_at LIMIT :limit;

-- name: mark_returned!
UPDATE payouts SET status = 'returned', updated_at = :updated_at, return_due_at = NULL
WHERE idempotency_key = :key AND status = 'paid';

-- name: insert_notification!
INSERT INTO notifications (id, payout_key, type, body, created_at, attempts, next_attempt_at)
VALUES (:id, :key, :type, :body, :created_at, 0, :next_attempt_at);

-- name: due_notifications
-- A notification waits while an earlier one about the same payout is still being delivered, so
-- that the receiver sees `payout.settled` before `payout.returned`.
SELECT n.id, n.payout_key, n.type, n.body, n.attempts FROM notifications AS n
WHERE n.sent_at IS NULL AND n.attempts < :attempts_max AND n.next_attempt_at <= :now
  AND NOT EXISTS (
    SELECT 1 FROM notifications AS earlier
    WHERE earlier.payout_key = n.payout_key AND earlier.rowid < n.rowid
      AND earlier.sent_at IS NULL AND earlier.attempts < :attempts_max
  )
ORDER BY n.rowid LIMIT :limit;

-- name: mark_notification_sent!
UPDATE notifications SET sent_at = :sent_at, attempts = attempts + 1 WHERE id = :id;

-- name: mark_notification_failed!
UPDATE notifications SET attempts = :attempts, next_attempt_at = :next_attempt_at WHERE id = :id;
