"""`homeward up` on one machine: embedded PostgreSQL and broker, the supervisor, secrets, runtime.json."""
