"""Disbursement: one stipend per verified arrival and per identity, reserved, paid, recorded."""

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from contracts.envelope import Envelope
from contracts.events import ArrivalVerified, RegistrationAccepted, StipendDisbursed, StipendFailed
from services.disbursement import domain, stipends
from services.disbursement.adapters.provider import (
    AmbiguousPayoutError,
    Payout,
    PayoutProvider,
    PermanentPayoutError,
    ProviderUnavailableError,
)
from services.disbursement.stipends import Queries
from services.runtime import crypto, metrics
from services.runtime.db import fetch_all
from services.runtime.messages import now
from services.runtime.uow import UnitOfWork

logger = structlog.get_logger("homeward.disbursement")


@dataclass(frozen=True)
class Program:
    amount: Decimal
    currency: str


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
        await _refuse_second_stipend(uow, queries, case, payment_id)
        return
    payment = await queries.payments.lock_payment(uow.connection, payment_id=payment_id)
    if await stipends.reserve(uow.connection, queries, payment):
        logger.info("stipend.reserved", payment_id=str(payment_id))
    else:
        stipends.emit_held(uow, payment)


async def _refuse_second_stipend(uow: UnitOfWork, queries: Queries, case: Any, payment_id: UUID) -> None:
    await queries.payments.refuse(uow.connection, case_id=case["case_id"], reason=domain.REFUSED_IDENTITY_PAID)
    failed = StipendFailed(
        case_id=case["case_id"], payment_id=payment_id, reason=domain.REFUSED_IDENTITY_PAID, failed_at=now()
    )
    uow.emit(failed, correlationid=case["correlationid"], causationid=case["verified_event_id"])
    logger.warning("stipend.refused", reason=domain.REFUSED_IDENTITY_PAID)


async def fund_initial_budget(pool: asyncpg.Pool, queries: Queries, amount: Decimal, currency: str) -> None:
    """Opens the accounts and funds the budget once, however often the service starts."""
    async with pool.acquire() as connection, connection.transaction():
        await stipends.fund(
            connection, queries, amount=amount, currency=currency, reference=domain.INITIAL_FUNDING_REFERENCE
        )


@dataclass
class PayoutWorker:
    """Pays reserved stipends through the provider; a payment's failure never holds up the others."""

    pool: asyncpg.Pool
    queries: Queries
    runtime_queries: Any
    provider: PayoutProvider
    data_key: bytes
    batch_size_max: int
    concurrency_max: int

    async def pay_reserved(self) -> int:
        async with self.pool.acquire() as connection, connection.transaction():
            due = await fetch_all(self.queries.payments.reserved_payments(connection, limit=self.batch_size_max))
            payments = [
                await self.queries.payments.lock_payment(connection, payment_id=row["payment_id"]) for row in due
            ]
            if not payments:
                return 0
            limiter = asyncio.Semaphore(self.concurrency_max)
            outcomes = await asyncio.gather(*(self._pay(payment, limiter) for payment in payments))
            uow = UnitOfWork(connection, "disbursement", self.runtime_queries)
            for payment, outcome in zip(payments, outcomes, strict=True):
                with structlog.contextvars.bound_contextvars(
                    case_id=str(payment["case_id"]),
                    correlationid=str(payment["correlationid"]),
                    event_type=StipendDisbursed.TOPIC,
                ):
                    await self._settle(uow, payment, outcome)
            await uow.flush()
        for outcome in outcomes:  # committed
            metrics.PAYOUTS.labels(_payout_outcome(outcome)).inc()
        return len(payments)

    async def _pay(self, payment: Any, limiter: asyncio.Semaphore) -> tuple[str, Payout] | Exception:
        """One payout; its failure is returned, not raised."""
        try:
            person = crypto.unseal(self.data_key, payment["sealed"], bound_to=str(payment["case_id"]))
        except crypto.UNSEAL_ERRORS:
            return PermanentPayoutError(domain.FAILED_INSTRUMENT_UNREADABLE)
        instrument, method = person["payout"], person["payout"]["method"]
        try:
            async with limiter:
                payout = await self.provider.pay(
                    key=str(payment["payment_id"]), amount=payment["amount"], currency=payment["currency"],
                    method=method, instrument=instrument, resolve_first=payment["payout_attempts"] > 0,
                )  # fmt: skip
        except (PermanentPayoutError, ProviderUnavailableError, AmbiguousPayoutError) as error:
            return error
        return method, payout

    async def _settle(self, uow: UnitOfWork, payment: Any, outcome: tuple[str, Payout] | Exception) -> None:
        if isinstance(outcome, PermanentPayoutError):
            logger.error("stipend.payout_refused", payment_id=str(payment["payment_id"]), detail=str(outcome))
            await stipends.void(uow, self.queries, payment, outcome.code)
        elif isinstance(outcome, Exception):
            # Still reserved; the next pass asks the provider about this key before paying.
            error = f"{type(outcome).__name__}: {outcome}"
            await self.queries.payments.count_payout_attempt(
                uow.connection, payment_id=payment["payment_id"], error=error
            )
            logger.warning("stipend.payout_unresolved", payment_id=str(payment["payment_id"]), error=error)
        else:
            await stipends.apply_provider_status(uow, self.queries, payment, *outcome)

    async def release_held(self) -> int:
        async with self.pool.acquire() as connection, connection.transaction():
            return await stipends.release_held(connection, self.queries, limit=self.batch_size_max)


def _payout_outcome(outcome: tuple[str, Payout] | Exception) -> str:
    if isinstance(outcome, PermanentPayoutError):
        return "refused"
    if isinstance(outcome, Exception):
        return "unresolved"
    return outcome[1].status


async def read_gauges(connection: Any, *, queries: Queries) -> None:
    """Disbursement's part of /metrics: what waits for the provider or for money, and the budget left."""
    waiting = await queries.payments.waiting_payments(connection)
    metrics.PAYMENTS_WAITING.labels("reserved").set(waiting["reserved"])
    metrics.PAYMENTS_WAITING.labels("held").set(waiting["held"])
    available = await queries.ledger.available(connection, code=domain.BUDGET_ACCOUNT)
    if available is not None:
        metrics.BUDGET_AVAILABLE.set(float(available))
