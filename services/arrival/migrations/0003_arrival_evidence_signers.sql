-- Signed evidence (contract v1.1): who may vouch for which source of evidence, with which key.
-- Signers are never deleted: a revoked signer keeps its row, so that evidence it signed before
-- the revocation can still be checked and its id can never be registered again with another key.
CREATE TABLE evidence_signers (
    signer_id   text        PRIMARY KEY CHECK (length(signer_id) BETWEEN 1 AND 200),
    source      text        NOT NULL CHECK (source IN ('participant_app', 'carrier', 'partner_office')),
    public_key  bytea       NOT NULL UNIQUE CHECK (length(public_key) = 32),
    office_code text        CHECK (office_code IS NULL OR (source = 'partner_office' AND length(office_code) > 0)),
    added_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

