-- name: claim_application^
-- Returns a row only for an application id seen for the first time.
INSERT INTO applications (application_id, correlationid)
VALUES (:application_id, :correlationid)
ON CONFLICT (application_id) DO NOTHING
RETURNING application_id;

-- name: application_outcome^
SELECT outcome_topic, outcome_data, correlationid FROM applications WHERE application_id = :application_id;

-- name: record_outcome!
UPDATE applications
SET outcome_topic = :outcome_topic, outcome_data = :outcome_data::jsonb, decided_at = now()
WHERE application_id = :application_id;

-- name: claim_identity$
-- Returns the case that holds the identity: the new case if the claim is new, else the first one.
WITH claimed AS (
    INSERT INTO identity_claims (identity_key, case_id)
    VALUES (:identity_key, :case_id)
    ON CONFLICT (identity_key) DO NOTHING
    RETURNING case_id
)
SELECT case_id FROM claimed
UNION ALL
SELECT case_id FROM identity_claims WHERE identity_key = :identity_key
LIMIT 1;

-- name: open_case!
INSERT INTO cases (case_id, application_id, identity_key, sealed)
VALUES (:case_id, :application_id, :identity_key, :sealed);

-- name: identity_holder$
-- A fresh statement sees a claim that a concurrent transaction committed after
-- `claim_identity` took its snapshot.
SELECT case_id FROM identity_claims WHERE identity_key = :identity_key;
