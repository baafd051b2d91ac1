"""Contract v1.1 controls on money, as operator commands carry them out (`homeward review`,
`homeward approvals`, `homeward ledger fund`, `homeward program`): each runs in one unit of work
of disbursement, so the change, its events and its audit line commit together.

- A payment held `instrument_shared` is paid only after one operator asks to release it and
  another approves; refused the same way, it fails with `review_refused`.
- Funding the budget takes two operators too.
- The program can be paused: payments that become due are held `program_paused` and nothing goes
  to the payout provider; resume releases them oldest first, within the budget.

The rule "two different people" is the approval table's CHECK; this module only says it first.
"""

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import structlog

from contracts.events import StipendFailed
from services.disbursement import domain, ledger, stipends
from services.disbursement.stipends import Queries
from services.runtime.db import fetch_all
from services.runtime.ids import new_id
from services.runtime.messages import now
from services.runtime.uow import UnitOfWork

logger = structlog.get_logger("homeward.disbursement")

RELEASE = "release"
REFUSE = "refuse"
FUND = "fund"
RESUME_BATCH_MAX = 500
"""Paused payments released per statement on resume."""
RESUME_ROUNDS_MAX = 1000
RELEASE_ROUNDS_MAX = 1000
Audit = Callable[[Any, str, dict[str, Any], dict[str, Any]], Awaitable[None]]
"""Appends the audit line of a change, on the change's own connection: (connection, command,
arguments, outcome)."""


class ReviewRefused(Exception):
    """An operator's request or approval that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class Requested:
    request_id: UUID
    action: str
    payment_id: UUID | None


async def request(
    uow: UnitOfWork, queries: Queries, review: Any, *, action: str, operator: str, audit: Audit,
    payment_id: UUID | None = None, amount: Decimal | None = None, currency: str | None = None,
    reference: str | None = None, reason: str | None = None,
) -> Requested:  # fmt: skip
    """An operator asks for a release, a refusal or a top-up; another must approve it."""
    connection = uow.connection
    if payment_id is not None:
        payment = await review.payment_for_review(connection, payment_id=payment_id)
        if payment is None:
            raise ReviewRefused(f"no payment {payment_id}")
        if (payment["status"], payment["hold_reason"]) != ("held", domain.HELD_INSTRUMENT_SHARED):
            state = payment["hold_reason"] or payment["status"]
            raise ReviewRefused(f"payment {payment_id} is not held for review ({state})")
    row = await review.request_approval(
        connection, request_id=new_id(), action=action, payment_id=payment_id, amount=amount, currency=currency,
        reference=reference, reason=reason, requested_by=operator,
    )  # fmt: skip
    if row is None:
        open_one = await review.open_request_for(connection, payment_id=payment_id, reference=reference)
        raise ReviewRefused(
            f"request {open_one['request_id']} ({open_one['action']}, by {open_one['requested_by']}) is open "
            "for it already: approve it (`homeward approvals approve`) first"
        )
    arguments = {"action": action, "payment_id": payment_id and str(payment_id), "reason": reason,
                 "amount": amount and f"{amount:.2f}", "currency": currency, "reference": reference}  # fmt: skip
    await audit(connection, f"{_command(action)} request", arguments, {"request_id": str(row["request_id"])})
    return Requested(row["request_id"], action, payment_id)


async def request_funding(
    uow: UnitOfWork, queries: Queries, review: Any, *, operator: str, audit: Audit, amount: Decimal, currency: str,
    reference: str,
) -> dict[str, Any]:  # fmt: skip
    """`ledger fund`: a top-up already made under this reference is answered at once (`exists`,
    or `refused` naming the field that differs), as the ledger would; any other is a request."""
    transfer_id = domain.funding_transfer_id(reference)
    made = await fetch_all(queries.ledger.get_transfers(uow.connection, transfer_ids=[transfer_id]))
    if made:
        differs = next((name for name, ours, theirs in (("amount", amount, made[0]["amount"]),
                                                        ("currency", currency, made[0]["currency"]))
                        if ours != theirs), None)  # fmt: skip
        if differs is None:
            return {"status": "exists", "transfer_id": transfer_id, "held_released": 0}
        return {"status": "refused", "transfer_id": transfer_id, "code": ledger.ID_REUSED, "field": differs}
    requested = await request(uow, queries, review, action=FUND, operator=operator, audit=audit, amount=amount,
                              currency=currency, reference=reference)  # fmt: skip
    return {"status": "requested", "request_id": str(requested.request_id), "requested_by": operator}


def _command(action: str) -> str:
    return {RELEASE: "review release", REFUSE: "review refuse", FUND: "ledger fund"}[action]


async def approve(
    uow: UnitOfWork, queries: Queries, review: Any, *, request_id: UUID, operator: str, audit: Audit,
    release_limit: int,
) -> dict[str, Any]:  # fmt: skip
    """A second operator approves a request, which is carried out in the same transaction."""
    connection = uow.connection
    row = await review.lock_request(connection, request_id=request_id)
    if row is None:
        raise ReviewRefused(f"no approval request {request_id}")
    if row["approved_by"] is not None:
        raise ReviewRefused(f"request {request_id} was approved already, by {row['approved_by']}")
    if row["declined_by"] is not None:
        raise ReviewRefused(f"request {request_id} was declined, by {row['declined_by']}")
    if row["requested_by"] == operator:
        raise ReviewRefused(f"{operator} asked for it: another operator must approve it (two-person rule)")
    if row["action"] == FUND:
        outcome = await _fund(connection, queries, row, release_limit=release_limit)
    else:
        outcome = await _decide_held(uow, queries, review, row)
    await review.approve(connection, request_id=request_id, approved_by=operator, outcome=_json(outcome))
    await audit(connection, "approvals approve", {"request_id": str(request_id), "action": row["action"]}, outcome)
    return {"request_id": str(request_id), "action": row["action"], "requested_by": row["requested_by"],
            "approved_by": operator, **outcome}  # fmt: skip


async def decline(
    uow: UnitOfWork, review: Any, *, request_id: UUID, operator: str, reason: str, audit: Audit
) -> dict[str, Any]:
    """Closes a request without carrying it out (its requester may retract it too: no money moves);
    a held payment stays held, and may be asked about again."""
    row = await review.lock_request(uow.connection, request_id=request_id)
    if row is None:
        raise ReviewRefused(f"no approval request {request_id}")
    if row["approved_by"] is not None or row["declined_by"] is not None:
        closer = row["approved_by"] or row["declined_by"]
        raise ReviewRefused(f"request {request_id} is closed already (by {closer})")
    await review.decline(uow.connection, request_id=request_id, declined_by=operator, reason=reason)
    outcome = {"request_id": str(request_id), "action": row["action"], "declined_by": operator, "reason": reason}
    await audit(uow.connection, "approvals decline", {"request_id": str(request_id), "reason": reason}, outcome)
    return {**outcome, "requested_by": row["requested_by"]}


async def _decide_held(uow: UnitOfWork, queries: Queries, review: Any, row: Any) -> dict[str, Any]:
    connection = uow.connection
    payment = await review.payment_for_review(connection, payment_id=row["payment_id"])
    if payment is None or (payment["status"], payment["hold_reason"]) != ("held", domain.HELD_INSTRUMENT_SHARED):
        raise ReviewRefused(f"payment {row['payment_id']} is no longer held for review")
    [locked] = await fetch_all(queries.payments.lock_payments(connection, payment_ids=[row["payment_id"]],
                                                              lease_id=None))  # fmt: skip
    if row["action"] == REFUSE:
        await review.refuse_held(connection, payment_id=row["payment_id"], reason=domain.FAILED_REVIEW_REFUSED)
        failed = StipendFailed(case_id=locked["case_id"], payment_id=locked["payment_id"],
                               reason=domain.FAILED_REVIEW_REFUSED, failed_at=now())  # fmt: skip
        uow.emit(failed, correlationid=locked["correlationid"], causationid=locked["cause_event_id"])
        logger.warning("stipend.review_refused", payment_id=locked["payment_id"], case_id=locked["case_id"])
        return {"payment_id": str(locked["payment_id"]), "status": "failed", "reason": domain.FAILED_REVIEW_REFUSED}
    if await queries.payments.program_paused(connection):
        await queries.payments.hold_payments(connection, payment_ids=[locked["payment_id"]],
                                             reason=domain.HELD_PROGRAM_PAUSED)  # fmt: skip
        stipends.emit_held(uow, locked, domain.HELD_PROGRAM_PAUSED)
        return {"payment_id": str(locked["payment_id"]), "status": "held", "reason": domain.HELD_PROGRAM_PAUSED}
    [reserved] = await stipends.reserve(connection, queries, [locked])
    if not reserved:
        stipends.emit_held(uow, locked, domain.HELD_BUDGET_EXHAUSTED)
        return {"payment_id": str(locked["payment_id"]), "status": "held", "reason": domain.HELD_BUDGET_EXHAUSTED}
    logger.debug("stipend.review_released", payment_id=locked["payment_id"], case_id=locked["case_id"])
    return {"payment_id": str(locked["payment_id"]), "status": "reserved"}


async def _fund(connection: Any, queries: Queries, row: Any, *, release_limit: int) -> dict[str, Any]:
    result = await stipends.fund(connection, queries, amount=row["amount"], currency=row["currency"],
                                 reference=row["reference"])  # fmt: skip
    if not result.ok:
        raise ReviewRefused(f"the ledger refused the top-up: {result.code} {result.field or ''}".strip())
    released = 0
    for _round in range(RELEASE_ROUNDS_MAX):
        step = await stipends.release_held(connection, queries, limit=release_limit)
        released += step
        if step < release_limit:
            break
    return {"status": result.status, "transfer_id": result.transfer_id, "amount": f"{row['amount']:.2f}",
            "currency": row["currency"], "reference": row["reference"], "held_released": released}  # fmt: skip


async def pause(uow: UnitOfWork, review: Any, *, operator: str, reason: str, audit: Audit) -> dict[str, Any]:
    state = await review.program_state(uow.connection)
    if state["paused"]:
        raise ReviewRefused(f"the program is paused already (by {state['changed_by']}: {state['reason']})")
    await review.set_program_state(uow.connection, paused=True, reason=reason, changed_by=operator)
    await audit(uow.connection, "program pause", {"reason": reason}, {"paused": True})
    logger.warning("program.paused", reason=reason)
    return {"paused": True, "reason": reason, "by": operator}


async def resume(uow: UnitOfWork, queries: Queries, review: Any, *, operator: str, audit: Audit) -> dict[str, Any]:
    """Ends the pause and releases the payments it held, oldest first while the budget fits; the
    rest wait for budget (held `budget_exhausted`, each told so)."""
    connection = uow.connection
    state = await review.program_state(connection)
    if not state["paused"]:
        raise ReviewRefused("the program is not paused")
    await review.set_program_state(connection, paused=False, reason=None, changed_by=operator)
    released = short = 0
    for _round in range(RESUME_ROUNDS_MAX):
        held = await fetch_all(queries.payments.held_payments(
            connection, limit=RESUME_BATCH_MAX, reason=domain.HELD_PROGRAM_PAUSED
        ))  # fmt: skip
        if not held:
            break
        locked = await fetch_all(queries.payments.lock_payments(
            connection, payment_ids=[row["payment_id"] for row in held], lease_id=None
        ))  # fmt: skip
        by_id = {row["payment_id"]: row for row in locked}
        ordered = [by_id[row["payment_id"]] for row in held]
        fitting = set(await stipends.fitting(connection, queries, held))
        reserve = [row for row in ordered if row["payment_id"] in fitting]
        results = await stipends.reserve(connection, queries, reserve)
        released += sum(results)
        # Those the budget cannot take now wait for it (a refused reservation already left them so).
        refused = [row for row, ok in zip(reserve, results, strict=True) if not ok]
        for row in refused:
            stipends.emit_held(uow, row, domain.HELD_BUDGET_EXHAUSTED)
        short += len(refused)
        wait = [row for row in ordered if row["payment_id"] not in fitting]
        if wait:
            await queries.payments.hold_payments(connection, payment_ids=[row["payment_id"] for row in wait],
                                                 reason=domain.HELD_BUDGET_EXHAUSTED)  # fmt: skip
            for row in wait:
                stipends.emit_held(uow, row, domain.HELD_BUDGET_EXHAUSTED)
            short += len(wait)
    outcome = {"paused": False, "released": released, "waiting_for_budget": short}
    await audit(connection, "program resume", {}, outcome)
    logger.info("program.resumed", released=released, waiting_for_budget=short)
    return {**outcome, "by": operator}


def _json(outcome: dict[str, Any]) -> str:
    return json.dumps(outcome, default=str)
