"""`homeward ledger …`: operator commands over the disbursement ledger and the payout provider.

They find a running `homeward up` through its state dir, or the database and provider through
HOMEWARD_DATABASE_URL and HOMEWARD_PAYOUT_PROVIDER_URL; they print tables, or JSON with --json.
"""

import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from services.disbursement.settings import ProgramCurrency
from services.ops.common import (
    READ_ONLY,
    AsJson,
    Operator,
    StateDir,
    audit_as,
    console,
    emit,
    in_disbursement,
    ledger_chain,
    locate,
    not_running,
    on_schema,
    operator_name,
    payout_provider,
)

ledger_app = typer.Typer(help="The stipend ledger: fund, balances, verify, reconcile.", no_args_is_help=True)

T = TypeVar("T")
RELEASE_BATCH_SIZE_MAX = 200
TOP_UP_MAX = Decimal("1000000000000000.00")
"""The largest single top-up: far above any program's budget, far inside the ledger's numeric(20,2)."""
CENT = Decimal("0.01")
RELEASE_ROUNDS_MAX = 1000


def _run(state_dir: Path | None, work: Callable[[Any, Any, str | None], Awaitable[T]], *, login: str = READ_ONLY) -> T:
    from services.disbursement.app import queries

    database_url, payouts = locate(state_dir, login)
    chain = ledger_chain(state_dir)
    if chain is None and login != READ_ONLY:
        raise typer.BadParameter(
            "appending to the ledger needs its key: set HOMEWARD_LEDGER_KEY (or _FILE), or pass the --state-dir "
            "of the running `homeward up` that made it"
        )
    return on_schema(
        database_url, "disbursement", lambda connection: work(connection, queries(chain), payouts), holds="ledger"
    )


async def _provider_payouts(payouts_url: str | None, state_dir: Path | None) -> list[Any]:
    from services.disbursement.adapters.provider import ProviderUnavailableError

    if not payouts_url:
        not_running(state_dir, "HOMEWARD_PAYOUT_PROVIDER_URL")
    provider = payout_provider(payouts_url, attempts_max=3, backoff_initial_seconds=0.2, state_dir=state_dir)
    try:
        return await provider.list_payouts()
    except ProviderUnavailableError as error:
        typer.echo(f"error: the payout provider at {payouts_url} did not answer ({error}).", err=True)
        typer.echo("Check that it is running (`homeward status`), or pass --skip-provider to verify.", err=True)
        raise typer.Exit(1) from error
    finally:
        await provider.close()


AMOUNT_TEXT = re.compile(r"[0-9]+(\.[0-9]+)?")
"""An amount as `--amount` takes it: digits and a decimal point, nothing else (no 1,000.50 nor
1e3: a comma is a thousands separator in one country and the decimal point in another)."""


def parse_amount(text: str, currency: str) -> Decimal:
    """`--amount`: a positive decimal in whole cents, at most TOP_UP_MAX; anything else refused
    with what to write instead (never rounded: 10.001 is not 10.00)."""
    typed = text.strip()
    if not AMOUNT_TEXT.fullmatch(typed):
        raise typer.BadParameter(f"{text!r} is not an amount; write digits and a point, like 250000.00",
                                 param_hint="--amount")  # fmt: skip
    value = Decimal(typed)
    if value <= 0:
        raise typer.BadParameter(f"{text} is not more than 0.00 {currency}", param_hint="--amount")
    if value > TOP_UP_MAX:
        raise typer.BadParameter(f"{text} is more than one top-up may add ({TOP_UP_MAX:,} {currency})",
                                 param_hint="--amount")  # fmt: skip
    if value != value.quantize(CENT):
        raise typer.BadParameter(f"{text} has more than 2 decimals: {currency} is booked in whole cents",
                                 param_hint="--amount")  # fmt: skip
    return value.quantize(CENT)


@ledger_app.command()
def fund(
    amount: Annotated[str, typer.Option(help="Amount to add to the program budget, e.g. 250000.00")],
    reference: Annotated[str, typer.Option(help="Your reference for this top-up; repeating it adds nothing")],
    operator: Operator = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Ask to top up the program budget; another operator approves.

    Ask to top up the program budget (idempotent per reference). Funding takes two people: once
    another operator approves the request (`homeward approvals approve`), the budget is credited
    and held stipends are released oldest first.

    Example: `homeward ledger fund --amount 250000.00 --reference grant-2026-12 --operator ana`."""
    from services.disbursement import review

    who = operator_name(operator)
    currency = ProgramCurrency().program_currency
    value = parse_amount(amount, currency)
    if ledger_chain(state_dir) is None:
        raise typer.BadParameter(
            "appending to the ledger needs its key: set HOMEWARD_LEDGER_KEY (or _FILE), or pass the --state-dir "
            "of the running `homeward up` that made it"
        )

    async def work(uow: Any, named: Any, review_sql: Any) -> dict[str, Any]:
        return await review.request_funding(uow, named, review_sql, operator=who, audit=audit_as(who),
                                            amount=value, currency=currency, reference=reference)  # fmt: skip

    outcome = {**in_disbursement(state_dir, work), "amount": f"{value:.2f}", "currency": currency,
               "reference": reference}  # fmt: skip
    emit(as_json, outcome, None)
    if not as_json:
        if outcome["status"] == "requested":
            typer.echo(f"request {outcome['request_id']} (fund {value:,.2f} {currency}) waits for another operator: "
                       f"homeward approvals approve {outcome['request_id']} --operator NAME")  # fmt: skip
        elif outcome["status"] == "exists":
            typer.echo(f"the top-up {reference!r} was made already ({value:,.2f} {currency}); nothing changed")
        else:
            typer.echo(f"error: the top-up {reference!r} was made already with another {outcome['field']}", err=True)
    if outcome["status"] == "refused":
        raise typer.Exit(1)


def budget_of(accounts: list[Any]) -> dict[str, str] | None:
    """The program budget as people read it (its account, services/disbursement/domain.py): what
    was funded, what pending stipends hold, what was paid, what is left."""
    from services.disbursement.domain import BUDGET_ACCOUNT

    account = next((account for account in accounts if account.code == BUDGET_ACCOUNT), None)
    if account is None:
        return None
    figures = {"funded": account.credits_posted, "reserved": account.debits_pending, "spent": account.debits_posted,
               "left": account.available}  # fmt: skip
    return {name: f"{value:.2f}" for name, value in figures.items()} | {"currency": account.currency}


def budget_table(budget: dict[str, str]) -> Table:
    table = Table(title="Program budget", title_justify="left")
    for column in ("funded", "reserved", "spent", "left"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{Decimal(budget[name]):,.2f} {budget['currency']}" for name in ("funded", "reserved", "spent",
                                                                                     "left")))  # fmt: skip
    return table


@ledger_app.command()
def balance(state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """The program budget and every ledger account's balances.

    The program budget (funded, reserved, spent, left), then every ledger account's balances.

    Example: `homeward ledger balance --json`."""
    from services.disbursement import operations

    async def work(connection: Any, named: Any, _: str | None) -> list[Any]:
        return await operations.balances(connection, named)

    accounts = _run(state_dir, work)
    budget = budget_of(accounts)
    table = Table(title="Ledger accounts", title_justify="left")
    for column in ("account", "currency", "posted", "pending debits", "pending credits", "available"):
        table.add_column(column, justify="right" if column not in ("account", "currency") else "left")
    for account in accounts:
        table.add_row(account.code, account.currency, f"{account.posted:,.2f}", f"{account.debits_pending:,.2f}",
                      f"{account.credits_pending:,.2f}", f"{account.available:,.2f}")  # fmt: skip
    document = {
        "budget": budget,
        "accounts": [{**asdict(a), "posted": str(a.posted), "available": str(a.available)} for a in accounts],
    }
    if as_json:
        emit(True, document, None)
        return
    if budget is not None:
        console().print(budget_table(budget))
    console().print(table)


@ledger_app.command()
def verify(
    state_dir: StateDir = None,
    as_json: AsJson = False,
    skip_provider: Annotated[
        bool, typer.Option("--skip-provider", help="Check the ledger alone, without asking the payout provider")
    ] = False,
) -> None:
    """Check the ledger's invariants; exits 1 on any breach.

    Check debits = credits, balances = sum of postings, the hash chain, one stipend per identity,
    and one provider payout per posted stipend. Exits 1 and names each breach.

    Example: `homeward ledger verify`, or `--skip-provider` where the provider cannot be asked."""
    from services.disbursement import operations

    async def work(connection: Any, named: Any, payouts_url: str | None) -> list[str]:
        fetch = None if skip_provider else partial(_provider_payouts, payouts_url, state_dir)
        breaches, _ = await operations.audit(connection, named, fetch)
        return breaches

    breaches = _run(state_dir, work)
    table = Table(title="Ledger verification")
    table.add_column("breach")
    for breach in breaches or ["none: the ledger is sound"]:
        table.add_row(breach)
    emit(as_json, {"clean": not breaches, "breaches": breaches}, table)
    raise typer.Exit(1 if breaches else 0)


@ledger_app.command()
def reconcile(state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Compare paid stipends with the provider's payouts.

    Compare the ledger's paid stipends with the provider's payouts: missing, extra, mismatched.
    Exits 1 on any difference.

    Example: `homeward ledger reconcile --json`."""
    from services.disbursement import operations

    async def work(connection: Any, named: Any, payouts_url: str | None) -> Any:
        _, report = await operations.audit(connection, named, partial(_provider_payouts, payouts_url, state_dir))
        return report

    report = _run(state_dir, work)
    table = Table(title="Reconciliation with the payout provider")
    table.add_column("kind")
    table.add_column("count", justify="right")
    table.add_column("payment ids (first 5)")
    for kind in ("missing", "extra", "mismatched"):
        items = getattr(report, kind)
        table.add_row(kind, str(len(items)), ", ".join(items[:5]))
    emit(as_json, {"clean": report.clean, **asdict(report)}, table)
    raise typer.Exit(0 if report.clean else 1)
