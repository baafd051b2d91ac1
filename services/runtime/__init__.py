"""What every service process runs and nothing else: settings base, logs, database, unit of work,
consumer, relay, re-drive, health, metrics, crypto, signing, migrations. Imports only `contracts`."""
