-- The consent each case was opened under: the version of the text the person agreed to, and when
-- (the app's submission time). Kept with the case, apart from its sealed personal data, so the
-- record of consent outlives the erasure of that data.
ALTER TABLE cases ADD COLUMN consent_version text;
ALTER TABLE cases ADD COLUMN consented_at timestamptz;
