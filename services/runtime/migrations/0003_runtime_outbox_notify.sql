-- Wakes the service's outbox relay when a transaction that wrote outbox rows commits (PostgreSQL
-- delivers a NOTIFY at commit, once per channel and transaction), instead of the relay polling
-- an empty outbox. The relay still looks on its own now and then, so nothing depends on this.
CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();
