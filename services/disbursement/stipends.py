"""The life of one stipend in the ledger: reserve, then post or void; reverse if returned.

Every function works on a payment row the caller has locked, inside the caller's
transaction, and writes the ledger, the payment and the outbox event together.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog

from contracts.events import StipendDisbursed, StipendFailed, StipendHeld
from services.disbursement import domain, ledger
from services.disbursement.adapters.provider import Payout
from services.runtime import crypto
from services.runtime.db import Connection, fetch_all
from services.runtime.messages import now
from services.runtime.uow import UnitOfWork

logger = structlog.get_logger("homeward.disbursement")


@dataclass(frozen=True)
class Queries:
    payments: Any
    ledger: Any


async def open_accounts(connection: Connection, queries: Queries, currency: str) -> None:
    for code, limited in domain.ACCOUNTS:
        await queries.ledger.open_account(
            connection, code=code, currency=currency, debits_must_not_exceed_credits=limited
        )


async def fund(
    connection: Connection, queries: Queries, *, amount: Decimal, currency: str, reference: str
) -> ledger.Result:
    """Tops up the budget; idempotent per reference (the same reference with another amount is refused)."""
    await open_accounts(connection, queries, currency)
    transfer = ledger.Transfer(
        domain.funding_transfer_id(reference), "single_phase",
        domain.FUNDING_ACCOUNT, domain.BUDGET_ACCOUNT, amount, currency,
    )  # fmt: skip
    return await ledger.create_transfer(connection, queries.ledger, transfer)


def _reservation(payment: Any, transfer_id: str) -> ledger.Transfer:
    return ledger.Transfer(
        transfer_id, "pending", domain.BUDGET_ACCOUNT, domain.STIPENDS_ACCOUNT,
        payment["amount"], payment["currency"], None, payment["payment_id"],
    )  # fmt: skip


async def reserve(connection: Connection, queries: Queries, payment: Any) -> bool:
    """Reserves the stipend from the budget if it fits; a refusal leaves the payment held."""
    transfer_id = domain.reserve_transfer_id(payment["payment_id"], payment["reserve_attempts"] + 1)
    result = await ledger.create_transfer(connection, queries.ledger, _reservation(payment, transfer_id))
    if result.ok:
        await queries.payments.mark_reserved(connection, payment_id=payment["payment_id"], reserve_id=transfer_id)
        return True
    await queries.payments.count_reserve_attempt(connection, payment_id=payment["payment_id"])
    return False


def method_of(payment: Any, data_key: bytes) -> str:
    person = crypto.unseal(data_key, payment["sealed"], bound_to=str(payment["case_id"]))
    method: str = person["payout"]["method"]
    return method


async def settle(uow: UnitOfWork, queries: Queries, payment: Any, *, method: str, provider_ref: str) -> None:
    """The provider paid: post the reservation and tell the case."""
    pending = _reservation(payment, payment["reserve_id"])
    _must(await ledger.create_transfer(
        uow.connection, queries.ledger, ledger.post_of(pending, domain.post_transfer_id(payment["payment_id"]))
    ))  # fmt: skip
    await queries.payments.mark_disbursed(
        uow.connection, payment_id=payment["payment_id"], method=method, provider_ref=provider_ref
    )
    disbursed = StipendDisbursed(
        case_id=payment["case_id"], payment_id=payment["payment_id"], amount=payment["amount"],
        currency=payment["currency"], method=method, provider_ref=provider_ref, disbursed_at=now(),
    )  # fmt: skip
    uow.emit(disbursed, correlationid=payment["correlationid"], causationid=payment["cause_event_id"])
    logger.debug("stipend.disbursed", payment_id=str(payment["payment_id"]), case_id=str(payment["case_id"]))


async def void(uow: UnitOfWork, queries: Queries, payment: Any, reason: str) -> None:
    """The stipend cannot be paid: release the reservation to the budget and tell the case."""
    pending = _reservation(payment, payment["reserve_id"])
    _must(await ledger.create_transfer(
        uow.connection, queries.ledger, ledger.void_of(pending, domain.void_transfer_id(payment["payment_id"]))
    ))  # fmt: skip
    await queries.payments.mark_status(uow.connection, payment_id=payment["payment_id"], status="failed", reason=reason)
    _emit_failed(uow, payment, reason)


async def reverse(uow: UnitOfWork, queries: Queries, payment: Any, reason: str) -> None:
    """A paid stipend came back (e.g. a closed account): a reversing transfer, and the case is told."""
    transfer = ledger.Transfer(
        domain.return_transfer_id(payment["payment_id"]), "single_phase", domain.STIPENDS_ACCOUNT,
        domain.BUDGET_ACCOUNT, payment["amount"], payment["currency"], None, payment["payment_id"],
    )  # fmt: skip
    _must(await ledger.create_transfer(uow.connection, queries.ledger, transfer))
    await queries.payments.mark_status(
        uow.connection, payment_id=payment["payment_id"], status="returned", reason=reason
    )
    _emit_failed(uow, payment, reason)


def _emit_failed(uow: UnitOfWork, payment: Any, reason: str) -> None:
    failed = StipendFailed(case_id=payment["case_id"], payment_id=payment["payment_id"], reason=reason, failed_at=now())
    uow.emit(failed, correlationid=payment["correlationid"], causationid=payment["cause_event_id"])
    logger.warning(
        "stipend.failed", payment_id=str(payment["payment_id"]), case_id=str(payment["case_id"]), reason=reason
    )


def emit_held(uow: UnitOfWork, payment: Any) -> None:
    held = StipendHeld(
        case_id=payment["case_id"], payment_id=payment["payment_id"],
        reason=domain.HELD_BUDGET_EXHAUSTED, held_at=now(),
    )  # fmt: skip
    uow.emit(held, correlationid=payment["correlationid"], causationid=payment["cause_event_id"])
    logger.warning("stipend.held", payment_id=str(payment["payment_id"]), case_id=str(payment["case_id"]))


async def release_held(connection: Connection, queries: Queries, *, limit: int) -> int:
    """Reserves held stipends oldest first while the budget allows; stops at the first that does not fit.

    The budget is read first, so that waiting for a top-up records no refused reservations."""
    available = await queries.ledger.available(connection, code=domain.BUDGET_ACCOUNT)
    released = 0
    for row in await fetch_all(queries.payments.held_payments(connection, limit=limit)):
        if available is None or available < row["amount"]:
            break
        payment = await queries.payments.lock_payment(connection, payment_id=row["payment_id"])
        if not await reserve(connection, queries, payment):
            break
        available -= row["amount"]
        released += 1
    if released:
        logger.info("stipend.released", payments=released)
    return released


class LedgerInvariantBroken(RuntimeError):
    """A transfer the payment's own state says must succeed was refused: stop, do not guess."""


def _must(result: ledger.Result) -> None:
    if not result.ok:
        raise LedgerInvariantBroken(f"{result.transfer_id}: {result.code} {result.field or ''}".strip())


async def apply_provider_status(uow: UnitOfWork, queries: Queries, payment: Any, method: str, payout: Payout) -> None:
    """What the provider says of a payout, applied to a locked payment; safe to repeat."""
    status = payment["status"]
    if payout.status in ("paid", "returned") and status == "reserved":
        await settle(uow, queries, payment, method=method, provider_ref=payout.provider_ref)
        status = "disbursed"
    if payout.status == "returned" and status == "disbursed":
        await reverse(uow, queries, payment, domain.FAILED_RETURNED)
    elif payout.status == "declined" and status == "reserved":
        await void(uow, queries, payment, domain.FAILED_DECLINED)
