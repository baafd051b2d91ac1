-- The audit trail of operator commands (schema `audit`, runtime/audit/ migrations).

-- name: record_action!
INSERT INTO audit.operator_actions (operator, command, arguments, outcome)
VALUES (:operator, :command, :arguments::text::jsonb, :outcome::text::jsonb);

-- name: actions
-- Newest first.
SELECT id, at, operator, command, arguments, outcome
FROM audit.operator_actions
ORDER BY id DESC
LIMIT :limit;
