-- Dead-letter copies hold a bad record's bytes exactly as they came: on the intake topic, a
-- person's name, documents and payout account. They are now sealed at rest (in the services that
-- hold a data key) and deleted as soon as the relay has published them; the `.dlq` topic keeps
-- them for the operators, within its own retention.
ALTER TABLE outbox ADD COLUMN dead_letter boolean NOT NULL DEFAULT false;
ALTER TABLE outbox ADD COLUMN sealed boolean NOT NULL DEFAULT false;
UPDATE outbox SET dead_letter = true WHERE topic LIKE '%.dlq';
DELETE FROM outbox WHERE dead_letter AND sent_at IS NOT NULL;
