"""Least privilege in PostgreSQL, on a real server: each service's role reaches its own schema only,
the ledger journal is append-only to disbursement by privilege (not only by trigger), and the
operator's role reads everything and changes nothing but the audit trail."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest

from services.runtime.migrate import NotMigrated, migrate
from services.runtime.roles import LOGINS, login_role, provision, role_url
from tests.conftest import Infra
from tests.integration.helpers import new_database

pytestmark = pytest.mark.integration

Refused = asyncpg.InsufficientPrivilegeError


@asynccontextmanager
async def logged_in(infra: Infra, login: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(infra.role_urls[login])
    try:
        yield connection
    finally:
        await connection.close()


async def refused(connection: asyncpg.Connection, statement: str) -> None:
    with pytest.raises(Refused):
        await connection.execute(statement)


async def test_registration_cannot_read_disbursement_nor_disbursement_registration(infra: Infra) -> None:
    async with logged_in(infra, "registration") as registration:
        assert await registration.fetchval("SELECT count(*) >= 0 FROM registration.cases")
        await refused(registration, "SELECT * FROM disbursement.payments")
        await refused(registration, "SELECT * FROM disbursement.transfers")
        await refused(registration, "SELECT * FROM arrival.evidence_signers")
    async with logged_in(infra, "disbursement") as disbursement:
        await refused(disbursement, "SELECT * FROM registration.cases")
        await refused(disbursement, "SELECT * FROM registration.identity_claims")
        await refused(disbursement, "SELECT * FROM travel.bookings")


async def test_the_roles_can_do_nothing_but_use_data(infra: Infra) -> None:
    async with logged_in(infra, "registration") as connection:
        rows = await connection.fetch(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolinherit "
            "FROM pg_roles WHERE rolname = ANY($1)",
            [login_role(login) for login in LOGINS],
        )
        assert len(rows) == len(LOGINS)
        assert all(not any(row[1:]) for row in rows), rows
        # Not an owner: no DDL in its own schema, let alone another's, nor in public.
        await refused(connection, "CREATE TABLE registration.intruder (x int)")
        await refused(connection, "ALTER TABLE registration.cases ADD COLUMN intruder int")
        await refused(connection, "CREATE TABLE public.intruder (x int)")
        await refused(connection, "TRUNCATE registration.cases")


async def test_the_journal_is_append_only_to_disbursement_by_privilege(infra: Infra) -> None:
    async with logged_in(infra, "disbursement") as connection:
        # Refused by privilege, before any trigger could run.
        await refused(connection, "UPDATE disbursement.transfers SET amount = amount")
        await refused(connection, "DELETE FROM disbursement.transfers")
        await refused(connection, "TRUNCATE disbursement.transfers")
        # Nor can it switch the triggers off: only the owner may, and replication mode is a superuser's.
        await refused(connection, "ALTER TABLE disbursement.transfers DISABLE TRIGGER transfers_append_only")
        await refused(connection, "SET session_replication_role = replica")
        # What it must do still works: read the journal, change a payment.
        assert await connection.fetchval("SELECT count(*) >= 0 FROM disbursement.transfers")
        await connection.execute("UPDATE disbursement.payments SET status = status WHERE false")


async def test_the_operator_reads_every_schema_and_changes_no_data(infra: Infra) -> None:
    async with logged_in(infra, "operator") as operator:
        for table in ("registration.cases", "travel.bookings", "arrival.evidence_signers", "disbursement.transfers",
                      "audit.operator_actions"):  # fmt: skip
            assert await operator.fetchval(f"SELECT count(*) >= 0 FROM {table}")
        await refused(operator, "UPDATE disbursement.payments SET status = status")
        await refused(operator, "DELETE FROM registration.cases")
        await refused(operator, "INSERT INTO disbursement.refusals SELECT * FROM disbursement.refusals")
        # The audit trail: appended to (by `dlq replay`), never altered.
        await refused(operator, "UPDATE audit.operator_actions SET operator = 'someone else'")
        await refused(operator, "DELETE FROM audit.operator_actions")


async def test_a_service_role_cannot_alter_the_audit_trail(infra: Infra) -> None:
    async with logged_in(infra, "arrival") as arrival:
        # It appends a line, but when it happened and its number are the database's to say.
        await refused(
            arrival,
            "INSERT INTO audit.operator_actions (at, operator, command) VALUES (now() - interval '1 year', 'a', 'b')",
        )
        with pytest.raises((Refused, asyncpg.GeneratedAlwaysError)):
            await arrival.execute("INSERT INTO audit.operator_actions (id, operator, command) VALUES (1, 'a', 'b')")
        await refused(arrival, "SELECT * FROM audit.operator_actions")
        await refused(arrival, "UPDATE audit.operator_actions SET operator = 'someone else'")
        await refused(arrival, "DELETE FROM audit.operator_actions")
        await refused(arrival, "TRUNCATE audit.operator_actions")


async def test_nobody_else_may_connect_to_the_database(infra: Infra) -> None:
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute("DROP ROLE IF EXISTS homeward_test_stranger")
        await admin.execute("CREATE ROLE homeward_test_stranger LOGIN PASSWORD 'stranger-password-1234'")
        parts = urlsplit(infra.database_url)
        host = parts.netloc.rpartition("@")[2]
        stranger = urlunsplit(parts._replace(netloc=f"homeward_test_stranger:stranger-password-1234@{host}"))
        with pytest.raises(Refused, match="permission denied for database"):
            await asyncpg.connect(stranger)
    finally:
        await admin.execute("DROP ROLE IF EXISTS homeward_test_stranger")
        await admin.close()


def test_a_service_role_finds_its_schema_current_and_cannot_migrate_one_that_is_not(infra: Infra) -> None:
    """A service migrates on start only where its role may; a current schema needs no privilege."""
    assert migrate(infra.role_urls["travel"], "travel") == 0
    fresh = new_database(infra, "unmigrated").rsplit("/", 1)[1]
    with pytest.raises(NotMigrated, match="homeward migrate"):
        migrate(infra.role_urls["travel"].rsplit("/", 1)[0] + f"/{fresh}", "travel")


def test_a_role_made_before_homeward_provisions_it_keeps_no_other_privilege(infra: Infra) -> None:
    """Someone with CREATEROLE made `homeward_travel` first, a member of a role that reads everything:
    provisioning strips it of every membership and of what it may do by itself."""
    with psycopg.connect(infra.database_url, autocommit=True) as admin:
        admin.execute("GRANT pg_read_all_data TO homeward_travel")
        admin.execute("ALTER ROLE homeward_disbursement_owner LOGIN PASSWORD 'owner-password-123456'")
        provision(infra.database_url, {login: urlsplit(url).password or "" for login, url in infra.role_urls.items()})
        memberships = admin.execute(
            "SELECT count(*) FROM pg_auth_members WHERE member = 'homeward_travel'::regrole"
        ).fetchone()
        owner_logs_in = admin.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'homeward_disbursement_owner'"
        ).fetchone()
    assert memberships == (0,) and owner_logs_in == (False,)
    assert migrate(infra.role_urls["travel"], "travel") == 0  # and it still logs in


def test_a_service_url_keeps_nothing_of_the_administrators_identity() -> None:
    administrator = (
        "postgresql://postgres:secret@db:5432/homeward?sslmode=verify-full&user=postgres&options=-c%20role%3Dx"
    )
    url = urlsplit(role_url(administrator, "travel", "travel-password-1234"))
    assert (url.username, url.password, url.hostname, url.path) == (
        "homeward_travel",
        "travel-password-1234",
        "db",
        "/homeward",
    )
    assert url.query == "sslmode=verify-full"
