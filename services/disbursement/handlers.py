"""Disbursement: one stipend per verified arrival and per identity, reserved, paid, recorded."""

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from contracts.envelope import Envelope
from contracts.events import (
    ArrivalVerified,
    RegistrationAccepted,
    StipendDisbursed,
    StipendFailed,
    StipendHeld,
)
from services.disbursement import domain
from services.disbursement.adapters.provider import Payout, PayoutProvider, PermanentPayoutError
from services.runtime import crypto
from services.runtime.db import Connection, fetch_all
from services.runtime.messages import now
from services.runtime.uow import UnitOfWork

logger = structlog.get_logger("homeward.disbursement")


@dataclass(frozen=True)
class Program:
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class Queries:
    payments: Any
    ledger: Any


async def handle_accepted(
    event: Envelope[RegistrationAccepted], uow: UnitOfWork, *, queries: Queries, program: Program
) -> None:
    case = event.data
    await queries.payments.remember_case(
        uow.connection,
        case_id=case.case_id,
        identity_key=case.identity_key,
        correlationid=event.correlationid,
        sealed=case.sealed,
        accepted_event_id=event.id,
    )
    await open_payment(uow, queries, case.case_id, program)


async def handle_verified(
    event: Envelope[ArrivalVerified], uow: UnitOfWork, *, queries: Queries, program: Program
) -> None:
    await queries.payments.remember_verified(uow.connection, case_id=event.data.case_id, verified_event_id=event.id)
    await open_payment(uow, queries, event.data.case_id, program)


async def open_payment(uow: UnitOfWork, queries: Queries, case_id: UUID, program: Program) -> None:
    """Once a case is both accepted and verified: one payment per identity, reserved or held."""
    case = await queries.payments.payable_case(uow.connection, case_id=case_id)
    if case is None:
        return
    payment_id = domain.payment_id_for(case_id)
    correlation = {"correlationid": case["correlationid"], "causationid": case["verified_event_id"]}
    created = await queries.payments.create_payment(
        uow.connection,
        payment_id=payment_id,
        case_id=case_id,
        identity_key=case["identity_key"],
        amount=program.amount,
        currency=program.currency,
        correlationid=case["correlationid"],
        cause_event_id=case["verified_event_id"],
    )
    if created is None:
        await queries.payments.refuse(uow.connection, case_id=case_id, reason=domain.REFUSED_IDENTITY_PAID)
        failed = StipendFailed(
            case_id=case_id, payment_id=payment_id, reason=domain.REFUSED_IDENTITY_PAID, failed_at=now()
        )
        uow.emit(failed, **correlation)
        logger.warning("stipend.refused", reason=domain.REFUSED_IDENTITY_PAID)
        return
    if await reserve(uow.connection, queries, payment_id, program.amount, program.currency):
        logger.info("stipend.approved", payment_id=str(payment_id))
        return
    held = StipendHeld(case_id=case_id, payment_id=payment_id, reason=domain.HELD_BUDGET_EXHAUSTED, held_at=now())
    uow.emit(held, **correlation)
    logger.warning("stipend.held", payment_id=str(payment_id), reason=domain.HELD_BUDGET_EXHAUSTED)


async def reserve(connection: Connection, queries: Queries, payment_id: UUID, amount: Decimal, currency: str) -> bool:
    """Moves the stipend from the budget to reserved if it fits; the budget row is locked first
    so two transactions cannot both see enough money."""
    await queries.ledger.lock_account(connection, code=domain.BUDGET_ACCOUNT)
    moved = await queries.ledger.record_transfer(
        connection,
        transfer_id=domain.reserve_transfer_id(payment_id),
        from_account=domain.BUDGET_ACCOUNT,
        to_account=domain.RESERVED_ACCOUNT,
        amount=amount,
        currency=currency,
        payment_id=payment_id,
    )
    if moved is None:
        return False
    await queries.payments.set_status(connection, payment_id=payment_id, status="approved")
    return True


async def fund_initial_budget(pool: asyncpg.Pool, queries: Queries, amount: Decimal, currency: str) -> None:
    """Opens the accounts and funds the budget once, however often the service starts."""
    async with pool.acquire() as connection, connection.transaction():
        for code, allow_negative in domain.ACCOUNTS:
            await queries.ledger.open_account(connection, code=code, currency=currency, allow_negative=allow_negative)
        await queries.ledger.record_transfer(
            connection,
            transfer_id=domain.INITIAL_FUNDING_TRANSFER,
            from_account=domain.FUNDING_ACCOUNT,
            to_account=domain.BUDGET_ACCOUNT,
            amount=amount,
            currency=currency,
            payment_id=None,
        )


@dataclass
class PayoutWorker:
    """Pays approved stipends through the provider and releases held ones when money allows."""

    pool: asyncpg.Pool
    queries: Queries
    runtime_queries: Any
    provider: PayoutProvider
    data_key: bytes
    batch_size_max: int
    concurrency_max: int

    async def pay_approved(self) -> int:
        async with self.pool.acquire() as connection, connection.transaction():
            approved = await fetch_all(self.queries.payments.approved_payments(connection, limit=self.batch_size_max))
            if not approved:
                return 0
            limiter = asyncio.Semaphore(self.concurrency_max)
            outcomes = await asyncio.gather(*(self._pay(payment, limiter) for payment in approved))
            uow = UnitOfWork(connection, "disbursement", self.runtime_queries)
            for payment, outcome in zip(approved, outcomes, strict=True):
                with structlog.contextvars.bound_contextvars(
                    case_id=str(payment["case_id"]),
                    correlationid=str(payment["correlationid"]),
                    event_type=StipendDisbursed.TOPIC,
                ):
                    await self._settle(uow, payment, outcome)
            await uow.flush()
        return len(approved)

    async def _pay(self, payment: Any, limiter: asyncio.Semaphore) -> tuple[str, Payout] | Exception:
        """One payout; its failure is returned, not raised, so it cannot hold up the others."""
        try:
            person = crypto.unseal(self.data_key, payment["sealed"], bound_to=str(payment["case_id"]))
        except crypto.UNSEAL_ERRORS:
            return PermanentPayoutError(domain.FAILED_INSTRUMENT_UNREADABLE)
        try:
            async with limiter:
                payout = await self.provider.pay(
                    idempotency_key=str(payment["payment_id"]),
                    amount=payment["amount"],
                    currency=payment["currency"],
                    instrument=person["payout"],
                )
        except Exception as error:
            return error
        return person["payout"]["method"], payout

    async def _settle(self, uow: UnitOfWork, payment: Any, outcome: tuple[str, Payout] | Exception) -> None:
        if isinstance(outcome, PermanentPayoutError):
            await self._fail(uow, payment, str(outcome))
        elif isinstance(outcome, Exception):
            # Still approved: the next pass asks the provider again with the same idempotency key.
            logger.warning("stipend.payout_retry", payment_id=str(payment["payment_id"]), error=type(outcome).__name__)
        else:
            await self._record(uow, payment, *outcome)

    async def _move_reserved(self, uow: UnitOfWork, payment: Any, transfer_id: str, to_account: str) -> None:
        """Moves a payment's reservation on: to paid, or back to the budget."""
        await self.queries.ledger.record_transfer(
            uow.connection,
            transfer_id=transfer_id,
            from_account=domain.RESERVED_ACCOUNT,
            to_account=to_account,
            amount=payment["amount"],
            currency=payment["currency"],
            payment_id=payment["payment_id"],
        )

    async def _fail(self, uow: UnitOfWork, payment: Any, reason: str) -> None:
        """Returns the reservation to the budget and tells the case it cannot be paid."""
        payment_id = payment["payment_id"]
        await self._move_reserved(uow, payment, domain.release_transfer_id(payment_id), domain.BUDGET_ACCOUNT)
        await self.queries.payments.mark_failed(uow.connection, payment_id=payment_id)
        failed = StipendFailed(case_id=payment["case_id"], payment_id=payment_id, reason=reason, failed_at=now())
        uow.emit(failed, correlationid=payment["correlationid"], causationid=payment["cause_event_id"])
        logger.error("stipend.failed", payment_id=str(payment_id), reason=reason)

    async def _record(self, uow: UnitOfWork, payment: Any, method: str, payout: Payout) -> None:
        payment_id = payment["payment_id"]
        await self._move_reserved(uow, payment, domain.payout_transfer_id(payment_id), domain.PAID_ACCOUNT)
        await self.queries.payments.mark_disbursed(
            uow.connection, payment_id=payment_id, method=method, provider_ref=payout.provider_ref
        )
        disbursed = StipendDisbursed(
            case_id=payment["case_id"],
            payment_id=payment_id,
            amount=payment["amount"],
            currency=payment["currency"],
            method=method,
            provider_ref=payout.provider_ref,
            disbursed_at=now(),
        )
        uow.emit(disbursed, correlationid=payment["correlationid"], causationid=payment["cause_event_id"])
        logger.info("stipend.disbursed", payment_id=str(payment_id))

    async def release_held(self) -> int:
        """Reserves held stipends oldest first while the budget allows."""
        released = 0
        async with self.pool.acquire() as connection, connection.transaction():
            held = await fetch_all(self.queries.payments.held_payments(connection, limit=self.batch_size_max))
            for payment in held:
                if not await reserve(
                    connection, self.queries, payment["payment_id"], payment["amount"], payment["currency"]
                ):
                    break
                released += 1
        if released:
            logger.info("stipend.released", payments=released)
        return released
