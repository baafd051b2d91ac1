"""Forward-only SQL migrations, applied by yoyo, one schema per service.

Each service's schema holds its own yoyo bookkeeping, so the shared inbox/outbox
migration applies once to every service's schema. Where the roles exist (`roles.provision`),
migrations run as the schema's owner role and its privileges are granted afresh after each run;
a service's own login role, which may not change a table, finds nothing pending and goes on.
"""

from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations
from yoyo.migrations import default_migration_table

from services.runtime import roles

RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"
AUDIT_MIGRATIONS = Path(__file__).parent / "audit"
AUDIT_SCHEMA = roles.AUDIT_SCHEMA
SERVICES_ROOT = Path(__file__).parent.parent


class NotMigrated(RuntimeError):
    """The schema lacks migrations and this connection's role may not apply them."""


def migrations_dir(service: str) -> Path:
    return SERVICES_ROOT / service / "migrations"


def _yoyo_url(database_url: str, schema: str, role: str | None = None) -> str:
    parts = urlsplit(database_url)
    extra = f"schema={schema}" + (f"&options={quote(f'-c role={role}')}" if role else "")
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, query, parts.fragment))


def migrate(database_url: str, service: str) -> int:
    """Applies the pending migrations of one service; returns how many were applied."""
    return _apply(database_url, service, [RUNTIME_MIGRATIONS, migrations_dir(service)])


def migrate_audit(database_url: str) -> int:
    """Applies the pending migrations of the audit trail's own schema (operator commands write it)."""
    return _apply(database_url, AUDIT_SCHEMA, [AUDIT_MIGRATIONS])


def _applied(connection: psycopg.Connection, schema: str) -> set[str]:
    """The ids yoyo recorded as applied in `schema`; none where it never ran there."""
    table = connection.execute("SELECT to_regclass(%s)", (f'"{schema}".{default_migration_table}',)).fetchone()
    if table is None or table[0] is None:
        return set()
    query = sql.SQL("SELECT migration_id FROM {}").format(sql.Identifier(schema, default_migration_table))
    return {row[0] for row in connection.execute(query)}


def _member_of(connection: psycopg.Connection, role: str) -> bool:
    """Whether this connection's role may act as `role` (an administrator may act as an owner)."""
    row = connection.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,)).fetchone()
    return bool(row and row[0])


def _apply(database_url: str, schema: str, folders: list[Path]) -> int:
    migrations = read_migrations(*(str(folder) for folder in folders))
    with psycopg.connect(database_url, autocommit=True) as connection:
        owner = roles.owner_role(schema) if roles.is_provisioned(connection, schema) else None
        # Up to date needs no privilege beyond reading yoyo's table: a service's role starts here.
        # Whoever may act as the schema's owner (`homeward migrate`) grants the privileges anew.
        current = {migration.id for migration in migrations} <= _applied(connection, schema)
        if current and not (owner and _member_of(connection, owner)):
            return 0
        connection.execute(roles.MIGRATE_LOCK)
        try:
            try:
                authorization = sql.SQL(" AUTHORIZATION {}").format(sql.Identifier(owner)) if owner else sql.SQL("")
                connection.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}{}").format(sql.Identifier(schema), authorization)
                )
                if owner:
                    roles.adopt(connection, schema)  # tables made by hand or before the roles: the owner's now
                backend = get_backend(_yoyo_url(database_url, schema, owner))
                with backend.lock():
                    pending = backend.to_apply(migrations)
                    backend.apply_migrations(pending)
                if owner:
                    roles.grant_as_owner(connection, schema)
            except psycopg.Error as error:
                # A privilege refused, or yoyo's connection refused the owner's role at its start.
                refused = isinstance(error, psycopg.errors.InsufficientPrivilege) or "permission denied" in str(error)
                if not refused:
                    raise
                raise NotMigrated(
                    f"schema {schema!r} has migrations pending and this role may not apply them ({error}); "
                    "run `homeward migrate` with the database's administrator first"
                ) from error
            return len(pending)
        finally:
            connection.execute(roles.MIGRATE_UNLOCK)
