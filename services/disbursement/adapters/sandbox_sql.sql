-- name: record_payout^
WITH recorded AS (
    INSERT INTO sandbox_payouts (idempotency_key, provider_ref, amount, currency, method)
    VALUES (:idempotency_key, :provider_ref, :amount, :currency, :method)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING provider_ref, amount, currency
)
SELECT * FROM recorded
UNION ALL
SELECT provider_ref, amount, currency FROM sandbox_payouts WHERE idempotency_key = :idempotency_key
LIMIT 1;
