-- The sandbox travel provider once kept its tickets (and travellers' names) in travel's own
-- schema; it is now a process of its own with its own store, so the table goes where it exists.
DROP TABLE IF EXISTS sandbox_tickets;
