"""`homeward review|approvals|program`: the controls of contract v1.1 on money.

- `review list|release|refuse`: payments held because their payout instrument already went to
  another identity (`instrument_shared`); releasing or refusing one is a request.
- `approvals list|approve`: requests wait for a second operator, who carries them out; the same
  operator cannot approve their own (the approval table's CHECK says so too). `ledger fund`
  makes such a request as well.
- `program pause|resume|status`: while paused, payments that become due are held
  (`program_paused`) and nothing goes to the payout provider; resume releases them oldest first.

Each change commits with its events and its audit line in one unit of work of disbursement
(services/disbursement/review.py).
"""

from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.table import Table

from services.ops.common import (
    READ_ONLY,
    AsJson,
    Operator,
    StateDir,
    audit_as,
    emit,
    in_disbursement,
    locate,
    on_schema,
    operator_name,
    request_line,
    review_queries,
)

review_app = typer.Typer(help="Payments held for review: list, release, refuse.", no_args_is_help=True)
approvals_app = typer.Typer(help="Requests waiting for a second operator.", no_args_is_help=True)
program_app = typer.Typer(help="Pause or resume the program's payouts.", no_args_is_help=True)

LIST_LIMIT_DEFAULT = 100
RELEASE_BATCH_SIZE_MAX = 200
REASON_CHARS_MAX = 200
HELD_FOR_REVIEW = ("instrument_shared",)
HELD_BY_THE_PAUSE = ("program_paused",)


def _uuid(text: str, what: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a {what} id (a UUID)", param_hint=what.upper()) from None


def _reason(text: str) -> str:
    reason = text.strip()
    if not reason or len(reason) > REASON_CHARS_MAX or not reason.isprintable():
        raise typer.BadParameter(f"a reason is 1 to {REASON_CHARS_MAX} printable characters", param_hint="--reason")
    return reason


# review ------------------------------------------------------------------------------------------


@review_app.command("list")
def list_held(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first")] = LIST_LIMIT_DEFAULT,
    paused: Annotated[bool, typer.Option("--paused", help="List those the program pause holds instead")] = False,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Payments held for review, oldest first.

    List the payments held because their payout instrument already received a stipend for another
    identity (`instrument_shared`), oldest first, with the request open on each, if any.

    Example: `homeward review list --json`."""
    from services.runtime.db import fetch_all

    database_url, _ = locate(state_dir, READ_ONLY)
    review_sql = review_queries()
    reasons = list(HELD_BY_THE_PAUSE if paused else HELD_FOR_REVIEW)

    async def work(connection: Any) -> list[dict[str, Any]]:
        rows = await fetch_all(review_sql.held_for_review(connection, reasons=reasons, limit=limit))
        return [dict(row) for row in rows]

    held = on_schema(database_url, "disbursement", work, holds="review tables")
    table = Table(title="Held for review" if not paused else "Held by the program pause", title_justify="left")
    for column in ("payment", "case", "amount", "reason", "held since", "request", "by"):
        table.add_column(column, overflow="fold")
    for row in held:
        table.add_row(
            str(row["payment_id"]), str(row["case_id"]), f"{row['amount']:,.2f} {row['currency']}", row["hold_reason"],
            row["updated_at"].isoformat(timespec="seconds"),
            f"{row['requested']} {row['request_id']}" if row["request_id"] else "", row["requested_by"] or "",
        )  # fmt: skip
    emit(as_json, held, table, empty="no payments held for review" if not paused else "no payments held by a pause")


def _request_on_payment(payment: str, action: str, operator: str | None, state_dir: Path | None,
                        reason: str | None) -> None:  # fmt: skip
    from services.disbursement import review

    who = operator_name(operator)
    payment_id = _uuid(payment, "payment")

    async def work(uow: Any, named: Any, review_sql: Any) -> Any:
        return await review.request(uow, named, review_sql, action=action, operator=who, audit=audit_as(who),
                                    payment_id=payment_id, reason=reason)  # fmt: skip

    typer.echo(request_line(in_disbursement(state_dir, work)))


@review_app.command()
def release(
    payment: Annotated[str, typer.Argument(help="The payment id (homeward review list)")],
    operator: Operator = None,
    state_dir: StateDir = None,
) -> None:
    """Ask to pay a held payment; another operator approves.

    Ask to release a payment held for review: once another operator approves the request, it is
    reserved from the budget and paid (or waits for budget, or for the end of a pause).

    Example: `homeward review release 1c7e4a9d-3b6f-5e2a-8d1c-7f4b2e9a6d35 --operator ana`."""
    from services.disbursement.review import RELEASE

    _request_on_payment(payment, RELEASE, operator, state_dir, None)


@review_app.command()
def refuse(
    payment: Annotated[str, typer.Argument(help="The payment id (homeward review list)")],
    reason: Annotated[str, typer.Option(help="Why it is refused, for the audit trail")],
    operator: Operator = None,
    state_dir: StateDir = None,
) -> None:
    """Ask to refuse a held payment; another operator approves.

    Ask to refuse a payment held for review: once another operator approves the request, the
    stipend fails (`stipend.failed.v1`, reason `review_refused`) and is never paid.

    Example: `homeward review refuse 1c7e4a9d-… --reason "same account as case 7f3c…" --operator ana`."""
    from services.disbursement.review import REFUSE

    _request_on_payment(payment, REFUSE, operator, state_dir, _reason(reason))


# approvals ---------------------------------------------------------------------------------------


@approvals_app.command("list")
def list_requests(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first")] = LIST_LIMIT_DEFAULT,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Requests waiting for a second operator, oldest first.

    List the open requests (release or refuse a held payment, fund the budget), oldest first, with
    who asked: anyone else may approve them.

    Example: `homeward approvals list`."""
    from services.runtime.db import fetch_all

    database_url, _ = locate(state_dir, READ_ONLY)
    review_sql = review_queries()

    async def work(connection: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in await fetch_all(review_sql.open_requests(connection, limit=limit))]

    requests = on_schema(database_url, "disbursement", work, holds="review tables")
    table = Table(title="Waiting for approval", title_justify="left")
    for column in ("request", "action", "payment or top-up", "reason", "requested by", "at"):
        table.add_column(column, overflow="fold")
    for row in requests:
        what = (
            str(row["payment_id"])
            if row["payment_id"]
            else f"{row['amount']:,.2f} {row['currency']} ({row['reference']})"
        )
        table.add_row(str(row["request_id"]), row["action"], what, row["reason"] or "", row["requested_by"],
                      row["requested_at"].isoformat(timespec="seconds"))  # fmt: skip
    emit(as_json, requests, table, empty="no requests waiting for approval")


@approvals_app.command()
def approve(
    request: Annotated[str, typer.Argument(help="The request id (homeward approvals list)")],
    operator: Operator = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Approve and carry out another operator's request.

    Approve a request another operator made, and carry it out at once: release or refuse the
    payment, or fund the budget (then held stipends are released oldest first). Refused when you
    made the request yourself.

    Example: `homeward approvals approve 5e2b8d4f-1a7c-4f3e-9d6b-2c8a5f1e7b93 --operator ben`."""
    from services.disbursement import review

    who = operator_name(operator)
    request_id = _uuid(request, "request")

    async def work(uow: Any, named: Any, review_sql: Any) -> dict[str, Any]:
        return await review.approve(uow, named, review_sql, request_id=request_id, operator=who,
                                    audit=audit_as(who), release_limit=RELEASE_BATCH_SIZE_MAX)  # fmt: skip

    outcome = in_disbursement(state_dir, work)
    table = Table(title="Approved and carried out", title_justify="left", show_header=False)
    for name, value in outcome.items():
        table.add_row(name.replace("_", " "), str(value))
    emit(as_json, outcome, table)


@approvals_app.command()
def decline(
    request: Annotated[str, typer.Argument(help="The request id (homeward approvals list)")],
    reason: Annotated[str, typer.Option(help="Why it is not carried out, for the audit trail")],
    operator: Operator = None,
    state_dir: StateDir = None,
) -> None:
    """Close a request without carrying it out.

    Decline a request (release, refuse or fund): it is closed and nothing changes; a held payment
    stays held and may be asked about again. Its requester may decline it too, to retract it.

    Example: `homeward approvals decline 5e2b8d4f-… --reason "wrong payment" --operator ben`."""
    from services.disbursement import review

    who = operator_name(operator)
    request_id = _uuid(request, "request")
    why = _reason(reason)

    async def work(uow: Any, _named: Any, review_sql: Any) -> dict[str, Any]:
        return await review.decline(uow, review_sql, request_id=request_id, operator=who, reason=why,
                                    audit=audit_as(who))  # fmt: skip

    outcome = in_disbursement(state_dir, work)
    typer.echo(f"request {outcome['request_id']} ({outcome['action']}, by {outcome['requested_by']}) declined by {who}")


# program -------------------------------------------------------------------------------------------


@program_app.command()
def pause(
    reason: Annotated[str, typer.Option(help="Why, for the audit trail and `program status`")],
    operator: Operator = None,
    state_dir: StateDir = None,
) -> None:
    """Stop all payouts; due payments are held until resume.

    Pause the program: from now on payments that become due are held (`stipend.held.v1`, reason
    `program_paused`) and the payout worker sends nothing to the provider. Cases, bookings and
    verifications go on.

    Example: `homeward program pause --reason "provider audit" --operator ana`."""
    from services.disbursement import review

    who = operator_name(operator)
    why = _reason(reason)

    async def work(uow: Any, _named: Any, review_sql: Any) -> dict[str, Any]:
        return await review.pause(uow, review_sql, operator=who, reason=why, audit=audit_as(who))

    in_disbursement(state_dir, work)
    typer.echo(f"paused by {who}: {why}. `homeward program resume --operator NAME` ends it.")


@program_app.command()
def resume(operator: Operator = None, state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """End a pause; held payments are released oldest first.

    Resume the program: the payments the pause held are reserved oldest first while the budget
    allows (the rest wait for a top-up), and payouts go to the provider again.

    Example: `homeward program resume --operator ana`."""
    from services.disbursement import review

    who = operator_name(operator)

    async def work(uow: Any, named: Any, review_sql: Any) -> dict[str, Any]:
        return await review.resume(uow, named, review_sql, operator=who, audit=audit_as(who))

    outcome = in_disbursement(state_dir, work)
    emit(as_json, outcome, None)
    if not as_json:
        typer.echo(f"resumed by {who}: {outcome['released']} payment(s) released, "
                   f"{outcome['waiting_for_budget']} waiting for budget")  # fmt: skip


@program_app.command()
def status(state_dir: StateDir = None, as_json: AsJson = False) -> None:
    """Whether the program is paused, since when and why.

    Say whether payouts are paused, by whom, since when and why.

    Example: `homeward program status --json`."""
    database_url, _ = locate(state_dir, READ_ONLY)
    review_sql = review_queries()

    async def work(connection: Any) -> dict[str, Any]:
        return dict(await review_sql.program_status(connection))

    state = on_schema(database_url, "disbursement", work, holds="program state")
    emit(as_json, state, None)
    if not as_json:
        if state["paused"]:
            typer.echo(f"paused since {state['changed_at']:%Y-%m-%d %H:%M:%S} by {state['changed_by']}: "
                       f"{state['reason']}")  # fmt: skip
        else:
            typer.echo("running: payouts go to the provider")
