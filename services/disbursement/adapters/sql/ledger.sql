-- name: open_account!
INSERT INTO accounts (code, currency, allow_negative)
VALUES (:code, :currency, :allow_negative)
ON CONFLICT (code) DO NOTHING;

-- name: record_transfer<!
-- Moves money between two accounts in one statement. A transfer id seen before moves
-- nothing (idempotency); a debit that would break an account's floor moves nothing either,
-- and the caller sees no row. Both balance rows are locked by the UPDATE itself.
WITH new_transfer AS (
    INSERT INTO transfers (transfer_id, from_account, to_account, amount, currency, payment_id)
    SELECT :transfer_id, :from_account, :to_account, :amount, :currency, :payment_id
    WHERE EXISTS (
        SELECT 1 FROM accounts
        WHERE code = :from_account AND (allow_negative OR balance >= :amount)
    )
    ON CONFLICT (transfer_id) DO NOTHING
    RETURNING transfer_id, from_account, to_account, amount
),
debited AS (
    UPDATE accounts a SET balance = a.balance - t.amount
    FROM new_transfer t WHERE a.code = t.from_account
    RETURNING a.code
),
credited AS (
    UPDATE accounts a SET balance = a.balance + t.amount
    FROM new_transfer t WHERE a.code = t.to_account
    RETURNING a.code
)
SELECT transfer_id FROM new_transfer
WHERE EXISTS (SELECT 1 FROM debited) AND EXISTS (SELECT 1 FROM credited);

-- name: lock_account^
SELECT code, balance FROM accounts WHERE code = :code FOR UPDATE;

-- name: balances
SELECT code, currency, balance FROM accounts ORDER BY code;
