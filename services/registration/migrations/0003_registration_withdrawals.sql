-- Contract v1.1: a withdrawn case does not block its identity (`duplicate_registration` is about
-- open or paid cases). Its identity claim is released, so a later application for the same
-- document may open a new case; the withdrawn case keeps its row, marked, and the rule that one
-- person has at most one live case moves from the table's constraint to a partial unique index.
ALTER TABLE cases ADD COLUMN withdrawn_at timestamptz;
ALTER TABLE cases DROP CONSTRAINT cases_identity_key_key;
CREATE UNIQUE INDEX cases_one_live_case_per_identity ON cases (identity_key) WHERE withdrawn_at IS NULL;
