"""Least privilege in PostgreSQL: who owns each schema, and what each service and the operator may do.

- `homeward_<schema>_owner` (no login) owns one schema: the services' four and `audit`. Migrations
  run as it (`migrate.py` sets the role), so nobody who merely runs a service can change a table.
- `homeward_<service>` logs in for one service: it reads and writes its own schema's tables and
  nothing else (no other schema, no DDL, no TRUNCATE, no superuser, no new roles or databases);
  the ledger journal is append-only to it by privilege as well as by trigger. It may append to the
  audit trail, which the operator commands that change that service's data do.
- `homeward_operator` logs in for the read-only operator commands: SELECT on every schema.

`provision` (an administrator's connection: superuser, or CREATEROLE and the database's owner)
creates or updates the roles and schemas; `grant` (the schema owner's connection) runs after each
migration, so tables added later are covered. SQL in sql/roles.sql.
"""

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from yoyo.backends.base import DatabaseBackend
from yoyo.migrations import default_migration_table

from services.runtime.settings import SERVICE_NAMES

ROLES_SQL = Path(__file__).parent / "sql" / "roles.sql"
AUDIT_SCHEMA = "audit"
OPERATOR = "operator"
LOGINS: tuple[str, ...] = (*SERVICE_NAMES, OPERATOR)
"""Who logs in: each service, and the operator."""
SCHEMAS: tuple[str, ...] = (*SERVICE_NAMES, AUDIT_SCHEMA)
APPEND_ONLY: Mapping[str, tuple[str, ...]] = {
    "disbursement": ("transfers",),
    "arrival": (),
    "registration": (),
    "travel": (),
}
"""Tables the service may only add rows to (the ledger's journal); their triggers refuse the rest too."""
BOOKKEEPING = (
    default_migration_table, DatabaseBackend.log_table, DatabaseBackend.version_table,
    DatabaseBackend.lock_table,
)  # fmt: skip
"""yoyo's own tables in each schema: the service reads what is applied, and changes nothing."""
PASSWORD_CHARS_MIN = 16
MIGRATE_LOCK = "SELECT pg_advisory_lock(hashtext('homeward.migrate'))"
MIGRATE_UNLOCK = "SELECT pg_advisory_unlock(hashtext('homeward.migrate'))"
"""Roles and migrations change one database one process at a time (CREATE … IF NOT EXISTS races)."""
IDENTITY_PARAMETERS = frozenset({"user", "password", "passfile", "options", "service"})


def login_role(login: str) -> str:
    """The PostgreSQL role a service (or the operator) logs in as."""
    return f"homeward_{login}"


def owner_role(schema: str) -> str:
    return f"homeward_{schema}_owner"


@cache
def _blocks() -> dict[str, str]:
    """roles.sql cut at its `-- block: NAME` lines."""
    parts = re.split(r"^-- block: (\w+)\n", ROLES_SQL.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _run(connection: psycopg.Connection, block: str, **names: sql.Composable) -> None:
    connection.execute(sql.SQL(_blocks()[block]).format(**names))


def provision(admin_url: str, passwords: Mapping[str, str]) -> None:
    """Creates (or brings up to date) every role and schema, with `passwords[login]` for each of
    `LOGINS`; run before `migrate`. Safe to run again: passwords are set anew each time."""
    missing = [login for login in LOGINS if len(passwords.get(login, "")) < PASSWORD_CHARS_MIN]
    if missing:
        raise ValueError(f"no password of at least {PASSWORD_CHARS_MIN} characters for: {', '.join(missing)}")
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(MIGRATE_LOCK)
        for login in LOGINS:
            role = login_role(login)
            _run(
                connection, "login", login_role=sql.Identifier(role), login_name=sql.Literal(role),
                password=sql.Literal(scram(connection, role, passwords[login])),
            )  # fmt: skip
        for schema in SCHEMAS:
            owner = {"owner_role": sql.Identifier(owner_role(schema)), "owner_name": sql.Literal(owner_role(schema))}
            _run(connection, "owner", schema=sql.Identifier(schema), **owner)
            adopt(connection, schema)
        database = connection.execute("SELECT current_database()").fetchone()
        assert database is not None
        logins = sql.SQL(", ").join(sql.Identifier(login_role(login)) for login in LOGINS)
        _run(connection, "database", database=sql.Identifier(database[0]), logins=logins)
        # What was migrated before the roles existed gets its grants now, not at the next migration.
        for schema in SCHEMAS:
            if _has_bookkeeping(connection, schema):
                grant_as_owner(connection, schema)


def scram(connection: psycopg.Connection, role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of `password`, computed here by libpq (PQencryptPasswordConn), so
    that the server, and any log of its statements, never sees the password itself."""
    return connection.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


def _has_bookkeeping(connection: psycopg.Connection, schema: str) -> bool:
    found = connection.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = ANY(%s)", (schema, list(BOOKKEEPING))
    ).fetchone()
    return found is not None and found[0] == len(BOOKKEEPING)


def adopt(connection: psycopg.Connection, schema: str) -> None:
    """Hands what someone else created in `schema` (before the roles existed) to its owner role."""
    _run(connection, "adopt", schema_name=sql.Literal(schema), owner_name=sql.Literal(owner_role(schema)))


def is_provisioned(connection: psycopg.Connection, schema: str) -> bool:
    """Whether `schema` has its owner role, so migrations run as it (else as whoever connects)."""
    found = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (owner_role(schema),)).fetchone()
    return found is not None


def grant_as_owner(connection: psycopg.Connection, schema: str) -> None:
    """The privileges on `schema`'s tables, granted as its owner role (after a migration added some)."""
    connection.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner_role(schema))))
    try:
        _grant(connection, schema)
    finally:
        connection.execute("RESET ROLE")


def _grant(connection: psycopg.Connection, schema: str) -> None:
    bookkeeping = sql.SQL(", ").join(sql.Identifier(schema, table) for table in BOOKKEEPING)
    operator = sql.Identifier(login_role(OPERATOR))
    if schema == AUDIT_SCHEMA:
        services = sql.SQL(", ").join(sql.Identifier(login_role(service)) for service in SERVICE_NAMES)
        _run(
            connection, "audit_schema", schema=sql.Identifier(schema), service_roles=services,
            operator_role=operator, bookkeeping=bookkeeping,
        )  # fmt: skip
        return
    service = sql.Identifier(login_role(schema))
    _run(
        connection, "service_schema", schema=sql.Identifier(schema), service_role=service,
        operator_role=operator, bookkeeping=bookkeeping,
    )  # fmt: skip
    for table in APPEND_ONLY[schema]:
        _run(connection, "append_only", table=sql.Identifier(schema, table), service_role=service)


def role_url(admin_url: str, login: str, password: str) -> str:
    """`admin_url` with the user and password of `login`'s role: same server, database and options."""
    parts = urlsplit(admin_url)
    host = parts.netloc.rpartition("@")[2]
    credentials = f"{quote(login_role(login), safe='')}:{quote(password, safe='')}"
    # Parameters that would log in as someone else, which libpq and asyncpg prefer to the URL's user.
    kept = [(key, value) for key, value in parse_qsl(parts.query) if key not in IDENTITY_PARAMETERS]
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}", query=urlencode(kept)))
