-- Wakes the cancellation worker when a statement may have made a ticket due for cancellation (a
-- withdrawal, or a booking recorded for a case withdrawn meanwhile), delivered at commit; it also
-- looks on its own now and then, for retries whose backoff ran out.
CREATE FUNCTION notify_cancellations_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.cancellations', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER bookings_cancellation_notify AFTER UPDATE OF cancel_state ON bookings
    FOR EACH STATEMENT EXECUTE FUNCTION notify_cancellations_due();
