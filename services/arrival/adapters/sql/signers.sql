-- Evidence signers (contract v1.1): read per batch by arrival, managed by `homeward signers`.

-- name: signers_by_id
SELECT signer_id, source, public_key, office_code, revoked_at
FROM evidence_signers
WHERE signer_id = ANY(:signer_ids::text[]);

-- name: add_signer^
-- Returns the row now registered under the id: the new one, or the one that was there (the
-- caller compares keys: the same key again is a no-op, another key is refused).
WITH added AS (
    INSERT INTO evidence_signers (signer_id, source, public_key, office_code)
    VALUES (:signer_id, :source, :public_key, :office_code)
    ON CONFLICT (signer_id) DO NOTHING
    RETURNING signer_id, source, public_key, office_code, added_at, revoked_at, true AS added
)
SELECT * FROM added
UNION ALL
SELECT signer_id, source, public_key, office_code, added_at, revoked_at, false AS added
FROM evidence_signers WHERE signer_id = :signer_id AND NOT EXISTS (SELECT 1 FROM added);

-- name: signer_with_key^
SELECT signer_id FROM evidence_signers WHERE public_key = :public_key;

-- name: revoke_signer^
-- Revoking again keeps the first revocation time; without one given, the database's clock (which
-- stamps evidence received) says when, not the operator's machine.
UPDATE evidence_signers SET revoked_at = coalesce(revoked_at, :revoked_at, now())
WHERE signer_id = :signer_id
RETURNING signer_id, revoked_at;

-- name: list_signers
SELECT signer_id, source, public_key, office_code, added_at, revoked_at
FROM evidence_signers
ORDER BY added_at, signer_id;
