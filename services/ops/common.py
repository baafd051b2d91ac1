"""What the operator commands share: the options every command takes, where a running
`homeward up` (or the configured database, broker and providers) is, and table/JSON output."""

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import Field, SecretStr
from rich.console import Console
from rich.table import Table

from services.devstack.running import SANDBOX_TOKENS, Runtime
from services.disbursement.settings import LedgerKey
from services.runtime.roles import LOGINS, OPERATOR
from services.runtime.settings import (
    SERVICE_NAMES,
    Infrastructure,
    KafkaClients,
    PayoutProviderAccess,
    ProviderTls,
    StateDirectory,
    revealed,
    secret_files,
)

if TYPE_CHECKING:
    from services.disbursement.adapters.provider import HttpPayoutProvider
    from services.disbursement.ledger import ChainKey

T = TypeVar("T")
PROVIDER_CALL_SECONDS = 30.0
MIGRATE_FIRST = "Run `homeward migrate` against it first (each service also migrates as it starts)."
PIPED_WIDTH = 160
"""Piped output gets a wide console, so ids and amounts are not cut to fit 80 columns."""


class OpsSettings(Infrastructure, KafkaClients, StateDirectory, PayoutProviderAccess, ProviderTls, LedgerKey):
    """What the operator commands read; unset database, broker and provider come from a running `up`."""

    payout_provider_url: str | None = Field(default=None, description="Base URL of the payout provider")
    operator: str | None = Field(
        default=None, description="Who runs the commands that change state, as the audit trail records it"
    )


class RolePasswords(Infrastructure):
    """What `homeward roles` reads: the password of each login role it creates (services/runtime/roles.py)."""

    db_password_registration: SecretStr | None = Field(default=None, description="Password of registration's role")
    db_password_travel: SecretStr | None = Field(default=None, description="Password of travel's role")
    db_password_arrival: SecretStr | None = Field(default=None, description="Password of arrival's role")
    db_password_disbursement: SecretStr | None = Field(default=None, description="Password of disbursement's role")
    db_password_operator: SecretStr | None = Field(default=None, description="Password of the operator's role")
    db_password_registration_file: Path | None = Field(default=None, description="A file holding it, instead")
    db_password_travel_file: Path | None = Field(default=None, description="A file holding it, instead")
    db_password_arrival_file: Path | None = Field(default=None, description="A file holding it, instead")
    db_password_disbursement_file: Path | None = Field(default=None, description="A file holding it, instead")
    db_password_operator_file: Path | None = Field(default=None, description="A file holding it, instead")

    _from_files = secret_files(*(f"db_password_{login}" for login in LOGINS))

    def passwords(self) -> dict[str, str]:
        """Each login's password; the command names the variables still unset."""
        given = {login: revealed(getattr(self, f"db_password_{login}")) for login in LOGINS}
        unset = [f"HOMEWARD_DB_PASSWORD_{login.upper()}" for login, password in given.items() if not password]
        if unset:
            raise typer.BadParameter(f"set {', '.join(unset)} (or each one's _FILE); `openssl rand -hex 24` makes one")
        return {login: password for login, password in given.items() if password}


StateDir = Annotated[
    Path | None,
    typer.Option(
        metavar="DIR",
        help="State dir of `homeward up`: where it keeps PostgreSQL data, secrets and logs "
        "[env: HOMEWARD_STATE_DIR; default .homeward]",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table")]
Operator = Annotated[
    str | None,
    typer.Option(
        "--operator",
        metavar="NAME",
        help="Who you are: recorded with what this command changes (`homeward audit list`) [env: HOMEWARD_OPERATOR]",
    ),
]
OPERATOR_CHARS_MAX = 100


def operator_name(given: str | None) -> str:
    """The operator a state-changing command runs for: --operator, else HOMEWARD_OPERATOR; refused
    when neither says, as the audit trail must name someone."""
    name = (given or OpsSettings().operator or "").strip()
    if not name:
        raise typer.BadParameter(
            "say who you are with --operator NAME (or HOMEWARD_OPERATOR): commands that change state "
            "are recorded in the audit trail (`homeward audit list`)"
        )
    if len(name) > OPERATOR_CHARS_MAX or not name.isprintable():
        raise typer.BadParameter(f"an operator name is 1 to {OPERATOR_CHARS_MAX} printable characters")
    return name


async def record_action(
    connection: Any, operator: str, command: str, arguments: dict[str, Any], outcome: dict[str, Any]
) -> None:
    """Appends one line to the audit trail; pass the connection of the change itself, inside its
    transaction where there is one, so that a change is never made without its record. Arguments
    hold no secrets (no command takes one)."""
    import asyncpg

    from services.runtime.db import audit_queries

    try:
        await audit_queries().record_action(
            connection, operator=operator, command=command,
            arguments=json.dumps(arguments, default=str), outcome=json.dumps(outcome, default=str),
        )  # fmt: skip
    except asyncpg.UndefinedTableError as error:
        # Raised inside the change's transaction, so the change is rolled back with it.
        typer.echo("error: the database has no audit trail yet; nothing was changed.", err=True)
        typer.echo(MIGRATE_FIRST, err=True)
        raise typer.Exit(1) from error


async def record_action_at(database_url: str, operator: str, command: str, arguments: dict[str, Any],
                           outcome: dict[str, Any]) -> None:  # fmt: skip
    """`record_action` on a connection of its own, for a change made outside the database (Kafka)."""
    from services.runtime.db import connect

    connection = await connect(database_url, schema="audit")
    try:
        await record_action(connection, operator, command, arguments, outcome)
    finally:
        await connection.close()


def console() -> Console:
    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


def human_duration(seconds: float) -> str:
    """A duration or an age as people read it: 0.72 s, 42 s, 5m 3s, 3h 12m, 2d 4h."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3_600:
        return f"{whole // 60}m {whole % 60}s"
    if whole < 86_400:
        return f"{whole // 3_600}h {whole % 3_600 // 60}m"
    return f"{whole // 86_400}d {whole % 86_400 // 3_600}h"


def measure_table(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    """A benchmark's report as a two-column table: what was measured, and its value."""
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right", overflow="fold")
    for measure, value in rows:
        table.add_row(measure, value)
    return table


def emit(as_json: bool, document: Any, table: Table | None, *, empty: str | None = None) -> None:
    """Prints `document` as JSON for scripts, or `table` for people; a table with no rows is the
    line `empty` instead ("no dead letters"), never a header alone."""
    if as_json:
        typer.echo(json.dumps(document, indent=2, default=json_value))
    elif table is not None and table.row_count == 0 and empty is not None:
        typer.echo(empty)
    elif table is not None:
        console().print(table)


def json_value(value: Any) -> Any:
    """What JSON output shows for a value JSON has no type for: RFC 3339 times in UTC with
    milliseconds, ids and amounts as their text."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def running(state_dir: Path | None) -> Runtime | None:
    """The `homeward up` running in `state_dir` (default: HOMEWARD_STATE_DIR), if any."""
    return Runtime.read(state_dir or OpsSettings().state_dir)


ADMINISTRATOR = "administrator"
"""Who creates databases (the benchmarks' own): the server's administrator, not a Homeward role."""
READ_ONLY = OPERATOR
"""The role of the commands that read: SELECT on every schema; the only thing it may change is to
append to the audit trail, which `dlq replay` (a change on the broker alone) does."""


def locate(state_dir: Path | None, login: str) -> tuple[str, str | None]:
    """The database URL and payout-provider URL: from the environment, else from a running `up`.
    `login` is the role a command connects as on a running `up`: the service whose data it
    changes (that role may append to the audit trail), READ_ONLY where it only reads, or
    ADMINISTRATOR. HOMEWARD_DATABASE_URL, where set, is used as given: its role is yours to choose."""
    settings = OpsSettings()
    runtime = running(state_dir)
    from_up = None
    if runtime is not None:
        from_up = runtime.database_url if login == ADMINISTRATOR else runtime.database_url_of(login)
    database_url = settings.database_url or from_up
    payouts = settings.payout_provider_url or (runtime.payouts if runtime else None) or None
    if not database_url:
        not_running(state_dir, "HOMEWARD_DATABASE_URL")
    return database_url, payouts


def not_running(state_dir: Path | None, variable: str, elsewhere: str | None = None) -> NoReturn:
    """Ends a command that found no running `homeward up` (a runtime condition: exit 1), saying
    where it looked and what fixes it: start one there, point --state-dir at the one running, or
    configure the deployment through `variable` (or what `elsewhere` says)."""
    looked = state_dir or OpsSettings().state_dir
    typer.echo(f"error: no running `homeward up` in {looked} (no {looked / 'runtime.json'} of a live `up`).", err=True)
    advice = [f"start one with `homeward up --state-dir {looked}`"]
    if state_dir is None:
        advice.append("pass --state-dir of the one that runs")
    advice.append(elsewhere or f"for a deployment, set {variable}")
    typer.echo("Then: " + "; or ".join(advice) + ".", err=True)
    raise typer.Exit(1)


def ledger_chain(state_dir: Path | None) -> "ChainKey | None":
    """The key of the ledger's hash chain: HOMEWARD_LEDGER_KEY, else the one a running `up`
    generated; None where neither is there (the chain then cannot be checked or extended). Where
    HOMEWARD_DATABASE_URL names the database, the key comes from the environment alone, as the
    database does, never from a local `up` that chains another ledger."""
    from services.disbursement.ledger import ChainKey

    settings = OpsSettings()
    if settings.ledger_key is not None:
        return ChainKey(settings.require_ledger_key())
    if settings.database_url:
        return None
    runtime = running(state_dir)
    key = runtime.secret("HOMEWARD_LEDGER_KEY") if runtime is not None else None
    return ChainKey(bytes.fromhex(key)) if key else None


def locate_kafka(state_dir: Path | None) -> str:
    """The Kafka bootstrap servers: from the environment, else from a running `up`."""
    runtime = running(state_dir)
    found = OpsSettings().kafka_bootstrap or (runtime.kafka if runtime else None)
    if not found:
        not_running(state_dir, "HOMEWARD_KAFKA_BOOTSTRAP")
    return found


def chosen_services(service: str | None) -> tuple[str, ...]:
    """The services a `--service` option names: that one, or all four."""
    if service is None:
        return SERVICE_NAMES
    if service not in SERVICE_NAMES:
        raise typer.BadParameter(f"unknown service {service!r}; one of: {', '.join(SERVICE_NAMES)}")
    return (service,)


def on_schema(
    database_url: str,
    schema: str,
    work: Callable[[Any], Awaitable[T]],
    *,
    holds: str,
    refusals: tuple[type[Exception], ...] = (),
) -> T:
    """Runs `work` on one connection that sees `schema` (a service's), and closes it. A schema
    not migrated yet, or a refusal of the kinds given, ends the command with exit code 2 and a
    line saying what to do; `holds` names what the schema would hold ("the ledger")."""
    from services.runtime.db import connect

    async def main() -> T:
        with _database_errors(database_url, holds, refusals, refusal_exit=2):
            connection = await connect(database_url, schema=schema)
            try:
                return await work(connection)
            finally:
                await connection.close()

    return asyncio.run(main())


@contextlib.contextmanager
def _database_errors(
    database_url: str, holds: str, refusals: tuple[type[Exception], ...], *, refusal_exit: int
) -> Iterator[None]:
    """What a command says when the database cannot be reached (exit 1), refuses the work (one of
    `refusals`: its message, `refusal_exit`) or lacks the schema's tables (exit 1, migrate first)."""
    import asyncpg

    from services.runtime import reachability

    try:
        yield
    except reachability.errors() as error:
        typer.echo(f"error: {reachability.describe(error, Infrastructure(database_url=database_url))}.", err=True)
        raise typer.Exit(1) from error
    except refusals as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(refusal_exit) from error
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as error:
        typer.echo(f"error: the database has no {holds} of this version yet ({error}).", err=True)
        typer.echo(MIGRATE_FIRST, err=True)
        raise typer.Exit(1) from error


def payout_provider(
    base_url: str, *, attempts_max: int, backoff_initial_seconds: float, state_dir: Path | None = None
) -> "HttpPayoutProvider":
    """The payout provider's client as the commands use it: 30 s calls, with the token and CA the
    settings give (HOMEWARD_PAYOUT_PROVIDER_TOKEN, HOMEWARD_PROVIDER_CA_FILE), else the token of
    the sandbox of the `up` running in `state_dir`."""
    from services.disbursement.adapters.provider import HttpPayoutProvider

    settings = OpsSettings()
    token = revealed(settings.payout_provider_token)
    runtime = running(state_dir)
    if token is None and runtime is not None and base_url == runtime.payouts:  # never to another provider
        token = runtime.secret(SANDBOX_TOKENS["payouts"])
    return HttpPayoutProvider(
        base_url, timeout_seconds=PROVIDER_CALL_SECONDS, attempts_max=attempts_max,
        backoff_initial_seconds=backoff_initial_seconds, token=token, ca_file=settings.provider_ca_file,
        client_cert=settings.provider_client_cert(),
    )  # fmt: skip


def in_unit_of_work(
    database_url: str,
    service: str,
    work: Callable[[Any], Awaitable[T]],
    *,
    holds: str,
    refusals: tuple[type[Exception], ...] = (),
    closing_topics: frozenset[str] = frozenset(),
) -> T:
    """Runs `work` in one unit of work of `service` (its schema, its outbox): what it changes and
    the events it emits commit together, or not at all. A refusal of the kinds given ends the
    command with exit code 1 and its message; unreachable or unmigrated, as `on_schema` says."""
    from services.runtime.db import init_connection, runtime_queries
    from services.runtime.uow import ServiceDatabase

    async def main() -> T:
        import asyncpg

        with _database_errors(database_url, holds, refusals, refusal_exit=1):
            pool = await asyncpg.create_pool(
                database_url, min_size=1, max_size=1, init=init_connection, server_settings={"search_path": service}
            )
            try:
                database = ServiceDatabase(pool, service, runtime_queries(), closing_topics=closing_topics)
                async with database.unit() as uow:
                    return await work(uow)
            finally:
                await pool.close()

    return asyncio.run(main())


# Two-person controls on money (services/ops/review.py, `ledger fund`) ---------------------------


def review_queries() -> Any:
    """The SQL of review holds, approvals and the pause (disbursement's adapters/sql/review.sql)."""
    from services.disbursement.app import SQL
    from services.runtime.db import load_queries

    return load_queries(SQL / "review.sql")


def in_disbursement(state_dir: Path | None, work: Any) -> Any:
    """Runs `work(uow, queries, review, audit)` in one unit of work of disbursement, as its role."""
    from services.disbursement import review
    from services.disbursement.app import RETENTION, queries

    database_url, _ = locate(state_dir, "disbursement")
    named, review_sql = queries(ledger_chain(state_dir)), review_queries()

    async def run(uow: Any) -> Any:
        return await work(uow, named, review_sql)

    return in_unit_of_work(
        database_url, "disbursement", run, holds="review tables", refusals=(review.ReviewRefused,),
        closing_topics=RETENTION.decides,
    )  # fmt: skip


def audit_as(operator: str) -> Any:
    """The audit line of a change, on the change's own connection."""

    async def audit(connection: Any, command: str, arguments: dict[str, Any], outcome: dict[str, Any]) -> None:
        await record_action(connection, operator, command, arguments, outcome)

    return audit


def request_line(requested: Any) -> str:
    return (f"request {requested.request_id} ({requested.action}) waits for another operator: "
            f"homeward approvals approve {requested.request_id} --operator NAME")  # fmt: skip
