"""The life of a stipend in the ledger: reserve, then post or void; reverse if returned.

Work is done a batch at a time, inside the caller's transaction, on payment rows the caller has
locked: the ledger takes every transfer of the batch in one call, the payments change by one
statement, and the outbox events follow in order. What a change is (`Change`) is decided by
pure functions, so that a whole pass can be planned before anything is written.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import structlog
from pydantic import BaseModel

from contracts.events import StipendDisbursed, StipendFailed, StipendHeld
from services.disbursement import domain, ledger
from services.disbursement.adapters.provider import Payout
from services.runtime import casekeys, crypto
from services.runtime.db import Connection, fetch_all
from services.runtime.messages import now
from services.runtime.uow import UnitOfWork

logger = structlog.get_logger("homeward.disbursement")


@dataclass(frozen=True)
class Queries:
    """The stipends' SQL, and the key that chains the journal (None where only reading it)."""

    payments: Any
    ledger: Any
    chain: ledger.ChainKey | None = None

    def require_chain(self) -> ledger.ChainKey:
        if self.chain is None:
            raise RuntimeError("appending to the ledger needs its key (HOMEWARD_LEDGER_KEY)")
        return self.chain


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
    return await ledger.create_transfer(connection, queries.ledger, transfer, queries.require_chain())


def _reservation(payment: Any, transfer_id: str) -> ledger.Transfer:
    return ledger.Transfer(
        transfer_id, "pending", domain.BUDGET_ACCOUNT, domain.STIPENDS_ACCOUNT,
        payment["amount"], payment["currency"], None, payment["payment_id"],
    )  # fmt: skip


async def reserve(connection: Connection, queries: Queries, payments: Sequence[Any]) -> list[bool]:
    """Reserves each stipend from the budget, in order, while it fits; a refusal leaves the payment
    held (and its next try uses a new transfer id). Returns which were reserved."""
    transfers = [
        _reservation(payment, domain.reserve_transfer_id(payment["payment_id"], payment["reserve_attempts"] + 1))
        for payment in payments
    ]
    results = await ledger.create_transfers(connection, queries.ledger, transfers, queries.require_chain())
    reserved = [result.ok for result in results]
    await queries.payments.mark_reserve_attempts(
        connection,
        payment_ids=[payment["payment_id"] for payment in payments],
        reserve_ids=[transfer.transfer_id if ok else None for transfer, ok in zip(transfers, reserved, strict=True)],
    )
    return reserved


def method_of(payment: Any, data_key: crypto.Keyring) -> str:
    person = casekeys.opened(data_key, payment, purpose=casekeys.PAYOUT)
    method: str = person["payout"]["method"]
    return method


@dataclass
class Change:
    """What becomes of one payment: its transfers, its new state, and the events that say so."""

    payment: Any
    status: str
    reason: str | None = None
    method: str | None = None
    provider_ref: str | None = None
    transfers: list[ledger.Transfer] = field(default_factory=list)
    events: list[BaseModel] = field(default_factory=list)


def _failed(payment: Any, reason: str) -> StipendFailed:
    return StipendFailed(case_id=payment["case_id"], payment_id=payment["payment_id"], reason=reason, failed_at=now())


def settled(payment: Any, *, method: str, provider_ref: str) -> Change:
    """The provider paid: post the reservation and tell the case."""
    pending = _reservation(payment, payment["reserve_id"])
    disbursed = StipendDisbursed(
        case_id=payment["case_id"], payment_id=payment["payment_id"], amount=payment["amount"],
        currency=payment["currency"], method=method, provider_ref=provider_ref, disbursed_at=now(),
    )  # fmt: skip
    post = ledger.post_of(pending, domain.post_transfer_id(payment["payment_id"]))
    return Change(payment, "disbursed", None, method, provider_ref, [post], [disbursed])


def voided(payment: Any, reason: str) -> Change:
    """The stipend cannot be paid: release the reservation to the budget and tell the case."""
    pending = _reservation(payment, payment["reserve_id"])
    void = ledger.void_of(pending, domain.void_transfer_id(payment["payment_id"]))
    return Change(payment, "failed", reason, transfers=[void], events=[_failed(payment, reason)])


def _reversal(payment: Any) -> ledger.Transfer:
    """A paid stipend came back (e.g. a closed account): the transfer that returns it to the budget."""
    return ledger.Transfer(
        domain.return_transfer_id(payment["payment_id"]), "single_phase", domain.STIPENDS_ACCOUNT,
        domain.BUDGET_ACCOUNT, payment["amount"], payment["currency"], None, payment["payment_id"],
    )  # fmt: skip


def provider_status(payment: Any, method: str, payout: Payout) -> Change | None:
    """What the provider says of a payout, as a change of the payment; None if it changes nothing
    (so applying the same answer twice is harmless)."""
    status = payment["status"]
    if payout.status == "declined" and status == "reserved":
        return voided(payment, domain.FAILED_DECLINED)
    change: Change | None = None
    if payout.status in ("paid", "returned") and status == "reserved":
        change, status = settled(payment, method=method, provider_ref=payout.provider_ref), "disbursed"
    if payout.status == "returned" and status == "disbursed":
        change = change or Change(payment, "disbursed", method=payment["method"], provider_ref=payment["provider_ref"])
        change.status, change.reason = "returned", domain.FAILED_RETURNED
        change.transfers.append(_reversal(payment))
        change.events.append(_failed(payment, domain.FAILED_RETURNED))
    return change


class LedgerInvariantBroken(RuntimeError):
    """A transfer the payment's own state says must succeed was refused: stop, do not guess."""


async def apply(uow: UnitOfWork, queries: Queries, changes: Sequence[Change]) -> None:
    """Writes a batch of changes: every transfer in one ledger call (each must succeed), every
    payment in one statement, then the events in order."""
    if not changes:
        return
    transfers = [transfer for change in changes for transfer in change.transfers]
    for result in await ledger.create_transfers(uow.connection, queries.ledger, transfers, queries.require_chain()):
        if not result.ok:
            raise LedgerInvariantBroken(f"{result.transfer_id}: {result.code} {result.field or ''}".strip())
    await queries.payments.change_payments(
        uow.connection,
        payment_ids=[change.payment["payment_id"] for change in changes],
        statuses=[change.status for change in changes],
        reasons=[change.reason for change in changes],
        methods=[change.method for change in changes],
        provider_refs=[change.provider_ref for change in changes],
    )
    for change in changes:
        payment = change.payment
        for event in change.events:
            uow.emit(event, correlationid=payment["correlationid"], causationid=payment["cause_event_id"])
        log = logger.bind(
            payment_id=payment["payment_id"], case_id=payment["case_id"], correlationid=payment["correlationid"]
        )
        if change.reason is None:
            log.debug("stipend.disbursed")
        else:
            log.warning("stipend.failed", reason=change.reason)


def emit_held(uow: UnitOfWork, payment: Any, reason: str = domain.HELD_BUDGET_EXHAUSTED) -> None:
    held = StipendHeld(
        case_id=payment["case_id"], payment_id=payment["payment_id"], reason=reason, held_at=now(),
    )  # fmt: skip
    uow.emit(held, correlationid=payment["correlationid"], causationid=payment["cause_event_id"])
    logger.warning(
        "stipend.held", payment_id=payment["payment_id"], case_id=payment["case_id"],
        correlationid=payment["correlationid"], reason=reason,
    )  # fmt: skip


async def release_held(
    connection: Connection, queries: Queries, *, limit: int, reason: str = domain.HELD_BUDGET_EXHAUSTED
) -> int:
    """Reserves stipends held for `reason` oldest first while the budget allows; stops at the first
    that does not fit. Nothing while the program is paused (a payment due then waits for resume).

    The budget is read first, so that waiting for a top-up records no refused reservations."""
    if await queries.payments.program_paused(connection):
        return 0
    fitting_ids = await fitting(connection, queries, await fetch_all(
        queries.payments.held_payments(connection, limit=limit, reason=reason)
    ))  # fmt: skip
    if not fitting_ids:
        return 0
    payments = await fetch_all(queries.payments.lock_payments(connection, payment_ids=fitting_ids, lease_id=None))
    released = sum(await reserve(connection, queries, payments))
    logger.info("stipend.released", payments=released, reason=reason)
    return released


async def fitting(connection: Connection, queries: Queries, held: list[Any]) -> list[Any]:
    """The ids of the first of `held` (oldest first) that the budget can still take."""
    available = await queries.ledger.available(connection, code=domain.BUDGET_ACCOUNT)
    taken: list[Any] = []
    for row in held:
        if available is None or available < row["amount"]:
            break
        available -= row["amount"]
        taken.append(row["payment_id"])
    return taken
