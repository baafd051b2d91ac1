"""Forward-only SQL migrations, applied by yoyo, one schema per service.

Each service's schema holds its own yoyo bookkeeping, so the shared inbox/outbox
migration applies once to every service's schema.
"""

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from yoyo import get_backend, read_migrations

RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"
AUDIT_MIGRATIONS = Path(__file__).parent / "audit"
AUDIT_SCHEMA = "audit"
SERVICES_ROOT = Path(__file__).parent.parent


def migrations_dir(service: str) -> Path:
    return SERVICES_ROOT / service / "migrations"


def _yoyo_url(database_url: str, schema: str) -> str:
    parts = urlsplit(database_url)
    query = f"{parts.query}&schema={schema}" if parts.query else f"schema={schema}"
    return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, query, parts.fragment))


def migrate(database_url: str, service: str) -> int:
    """Applies the pending migrations of one service; returns how many were applied."""
    return _apply(database_url, service, [RUNTIME_MIGRATIONS, migrations_dir(service)])


def migrate_audit(database_url: str) -> int:
    """Applies the pending migrations of the audit trail's own schema (operator commands write it)."""
    return _apply(database_url, AUDIT_SCHEMA, [AUDIT_MIGRATIONS])


def _apply(database_url: str, schema: str, folders: list[Path]) -> int:
    with psycopg.connect(database_url, autocommit=True) as connection:
        # CREATE SCHEMA IF NOT EXISTS can still race between processes; the lock serialises it.
        connection.execute("SELECT pg_advisory_lock(hashtext('homeward.migrate'))")
        try:
            connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            backend = get_backend(_yoyo_url(database_url, schema))
            migrations = read_migrations(*(str(folder) for folder in folders))
            with backend.lock():
                pending = backend.to_apply(migrations)
                backend.apply_migrations(pending)
            return len(pending)
        finally:
            connection.execute("SELECT pg_advisory_unlock(hashtext('homeward.migrate'))")
