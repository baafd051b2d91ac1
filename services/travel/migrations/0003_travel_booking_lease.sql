-- Which pass of the booking worker holds a request: outcomes are written only by the pass that
-- claimed it, so a pass that outlived its lease (and a second worker that took the request up)
-- cannot overwrite each other's attempt counts or outcomes.
ALTER TABLE bookings ADD COLUMN lease_id uuid;
