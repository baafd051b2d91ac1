-- name: open_account!
INSERT INTO accounts (code, currency, debits_must_not_exceed_credits)
VALUES (:code, :currency, :debits_must_not_exceed_credits)
ON CONFLICT (code) DO NOTHING;

-- name: balances
SELECT code, currency, debits_must_not_exceed_credits, debits_pending, debits_posted,
       credits_pending, credits_posted
FROM accounts ORDER BY code;

-- name: journal
SELECT seq, transfer_id, kind, debit_account, credit_account, amount, currency, pending_id, payment_id,
       prev_hash, hash
FROM transfers ORDER BY seq;

-- name: available$
-- What a limited account can still spend: posted credits less posted and pending debits.
SELECT credits_posted - debits_posted - debits_pending FROM accounts WHERE code = :code;

-- The write path (ledger.create_transfers): a handful of statements for any number of transfers.

-- name: lock_head^
-- Taken first by every writer, so that what the batch reads next cannot change under it and the
-- journal stays a line; held until commit.
SELECT seq, hash FROM ledger_head WHERE singleton FOR UPDATE;

-- name: head^
-- Read-only (`ledger verify`): where the chain ends, as the writers left it.
SELECT seq, hash FROM ledger_head WHERE singleton;

-- name: get_transfers
SELECT seq, transfer_id, kind, debit_account, credit_account, amount, currency, pending_id, payment_id
FROM transfers WHERE transfer_id = ANY(:transfer_ids::text[]);

-- name: get_refusals
SELECT transfer_id, code, request FROM transfer_refusals WHERE transfer_id = ANY(:transfer_ids::text[]);

-- name: resolutions_of
SELECT pending_id FROM transfers WHERE pending_id = ANY(:pending_ids::text[]);

-- name: lock_accounts
SELECT code, currency, debits_must_not_exceed_credits, debits_pending, debits_posted,
       credits_pending, credits_posted
FROM accounts WHERE code = ANY(:codes::text[]) ORDER BY code FOR UPDATE;

-- name: write_batch!
-- Everything a batch decided, in one statement: its journal rows, its kept refusals, one update
-- per touched account and the new head. The journal's reference check (a statement trigger) and
-- the accounts' CHECKs still have the last word.
WITH appended AS (
    INSERT INTO transfers (seq, transfer_id, kind, debit_account, credit_account, amount, currency,
                           pending_id, payment_id, prev_hash, hash)
    SELECT * FROM unnest(:seqs::bigint[], :transfer_ids::text[], :kinds::text[], :debit_accounts::text[],
                         :credit_accounts::text[], :amounts::numeric[], :currencies::text[], :pending_ids::text[],
                         :payment_ids::uuid[], :prev_hashes::text[], :hashes::text[])
), refused AS (
    INSERT INTO transfer_refusals (transfer_id, code, request)
    SELECT transfer_id, code, request::jsonb
    FROM unnest(:refused_ids::text[], :refused_codes::text[], :refused_requests::text[])
         AS r (transfer_id, code, request)
    ON CONFLICT (transfer_id) DO NOTHING
), moved AS (
    UPDATE accounts a
    SET debits_pending = a.debits_pending + m.debits_pending,
        debits_posted = a.debits_posted + m.debits_posted,
        credits_pending = a.credits_pending + m.credits_pending,
        credits_posted = a.credits_posted + m.credits_posted
    FROM unnest(:codes::text[], :debits_pending::numeric[], :debits_posted::numeric[],
                :credits_pending::numeric[], :credits_posted::numeric[])
         AS m (code, debits_pending, debits_posted, credits_pending, credits_posted)
    WHERE a.code = m.code
)
UPDATE ledger_head SET seq = :seq, hash = :hash WHERE singleton;
