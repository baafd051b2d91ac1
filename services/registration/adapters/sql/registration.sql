-- Registration's named queries. A run of valid submissions (handlers.handle_submitted) takes a
-- handful of statements; an invalid one (handlers.handle_invalid_submission) uses the same ones
-- for a run of one.

-- name: claim_applications
-- The application ids of the run seen for the first time (each claimed once, by the first row).
INSERT INTO applications (application_id, correlationid)
SELECT * FROM unnest(:application_ids::uuid[], :correlationids::uuid[])
ON CONFLICT (application_id) DO NOTHING
RETURNING application_id;

-- name: application_outcomes
SELECT application_id, outcome_topic, outcome_data, correlationid
FROM applications WHERE application_id = ANY(:application_ids::uuid[]);

-- name: claim_identities
-- The identities claimed now, each by the first case of the run that asked for it. Rows go in in
-- key order, so that two replicas claiming overlapping identities wait on each other, never deadlock.
INSERT INTO identity_claims (identity_key, case_id)
SELECT n.identity_key, n.case_id
FROM unnest(:identity_keys::text[], :case_ids::uuid[]) WITH ORDINALITY AS n (identity_key, case_id, position)
ORDER BY n.identity_key, n.position
ON CONFLICT (identity_key) DO NOTHING
RETURNING identity_key, case_id;

-- name: identity_holders
-- A fresh statement sees claims that concurrent transactions committed after `claim_identities`
-- took its snapshot.
SELECT identity_key, case_id FROM identity_claims WHERE identity_key = ANY(:identity_keys::text[]);

-- name: open_cases!
INSERT INTO cases (case_id, application_id, identity_key, sealed, consent_version, consented_at)
SELECT * FROM unnest(:case_ids::uuid[], :application_ids::uuid[], :identity_keys::text[], :sealed::text[],
                     :consent_versions::text[], :consented_ats::timestamptz[]);

-- name: record_outcomes!
UPDATE applications a
SET outcome_topic = o.outcome_topic, outcome_data = o.outcome_data::jsonb, decided_at = now()
FROM unnest(:application_ids::uuid[], :outcome_topics::text[], :outcome_data::text[])
     AS o (application_id, outcome_topic, outcome_data)
WHERE a.application_id = o.application_id;

-- name: withdraw_cases
-- case.withdrawn.v1: the cases are marked withdrawn and their identities' claims released, in one
-- statement; returns the cases withdrawn now.
WITH withdrawn AS (
    UPDATE cases SET withdrawn_at = now()
    WHERE case_id = ANY(:case_ids::uuid[]) AND withdrawn_at IS NULL
    RETURNING case_id
), released AS (
    DELETE FROM identity_claims WHERE case_id IN (SELECT case_id FROM withdrawn)
)
SELECT case_id FROM withdrawn;

-- name: erase_cases!
-- Erasure (services/runtime/retention.py): what registration kept of a closed case's personal
-- data, the `sealed` of its case and of its recorded outcome (a resubmission is then answered with
-- `sealed` "erased"), and its accepted event in the outbox (kept for re-driving). The identity
-- claim, the outcome otherwise and the consent record stay.
WITH erased_cases AS (
    UPDATE cases SET sealed = 'erased' WHERE case_id = ANY(:case_ids::uuid[]) RETURNING application_id
), erased_outcomes AS (
    UPDATE applications a SET outcome_data = jsonb_set(a.outcome_data, '{sealed}', '"erased"')
    FROM erased_cases e
    WHERE a.application_id = e.application_id AND a.outcome_data ? 'sealed'
)
DELETE FROM outbox WHERE key = ANY(:case_ids::uuid[]::text[]) AND topic = 'registration.accepted.v1';
