-- The window sweeper looks only at bookings still waiting for a verdict. It joined every case to
-- every outcome on each pass (113 ms a sweep at 95,000 cases, and growing with the program); a
-- booking now notes when its case was decided, and a partial index holds the undecided ones.
ALTER TABLE bookings ADD COLUMN decided_at timestamptz;
UPDATE bookings b SET decided_at = o.decided_at FROM outcomes o WHERE o.case_id = b.case_id;
CREATE INDEX bookings_undecided ON bookings (scheduled_arrival) WHERE decided_at IS NULL;
