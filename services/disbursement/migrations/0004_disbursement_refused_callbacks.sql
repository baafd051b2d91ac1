-- A payout notification whose amount or currency is not the payment's is never applied: it is
-- set aside with its reason, so that the payment's next notification is not held up behind it.
ALTER TABLE payout_callbacks ADD COLUMN refused_reason text;
