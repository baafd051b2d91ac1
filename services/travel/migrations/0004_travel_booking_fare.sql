-- The fare the travel provider reports for a ticket (a provider that reports none leaves it null):
-- what a return cost the program beside its stipend (`homeward report`).
ALTER TABLE bookings ADD COLUMN fare_amount numeric(12,2) CHECK (fare_amount IS NULL OR fare_amount >= 0);
ALTER TABLE bookings ADD COLUMN fare_currency text CHECK ((fare_currency IS NULL) = (fare_amount IS NULL));
