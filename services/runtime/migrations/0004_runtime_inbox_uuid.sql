-- The inbox keyed by the event id alone, as a uuid. Each service keeps its inbox in its own
-- schema, so the consumer column only ever held the service's name; a text key of 37 characters
-- beside it made every index entry three times the 16 bytes of a uuid. Keys that were not a UUID
-- (a record too broken to have one is keyed `topic:partition:offset`) become the MD5 of that text
-- read as a UUID, which is how the consumer keys them from now on.
ALTER TABLE processed_events DROP CONSTRAINT processed_events_pkey;
ALTER TABLE processed_events ALTER COLUMN event_id TYPE uuid USING (
    CASE WHEN event_id ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
         THEN event_id::uuid
         ELSE md5(event_id)::uuid
    END
);
-- One row per event is left where two consumers of the same service had claimed it.
DELETE FROM processed_events AS later
USING processed_events AS earlier
WHERE later.event_id = earlier.event_id AND later.ctid > earlier.ctid;
ALTER TABLE processed_events DROP COLUMN consumer;
ALTER TABLE processed_events ADD PRIMARY KEY (event_id);
