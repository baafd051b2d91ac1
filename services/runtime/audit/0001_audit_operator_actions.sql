-- The audit trail: who did what, when, with which arguments, through an operator command that
-- changes state. One table for the whole program (a command may act on several services), in a
-- schema of its own, append-only: a trigger refuses every UPDATE, DELETE and TRUNCATE.
CREATE TABLE operator_actions (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    operator  text        NOT NULL CHECK (length(operator) BETWEEN 1 AND 100),
    command   text        NOT NULL CHECK (length(command) BETWEEN 1 AND 100),
    arguments jsonb       NOT NULL DEFAULT '{}'::jsonb,
    outcome   jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE FUNCTION operator_actions_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER operator_actions_append_only BEFORE UPDATE OR DELETE ON operator_actions
    FOR EACH ROW EXECUTE FUNCTION operator_actions_are_append_only();
CREATE TRIGGER operator_actions_no_truncate BEFORE TRUNCATE ON operator_actions
    FOR EACH STATEMENT EXECUTE FUNCTION operator_actions_are_append_only();
