"""Disbursement: one stipend per verified arrival and per identity, reserved, paid, recorded."""

import asyncio
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import structlog

from contracts.envelope import Envelope
from contracts.events import ArrivalVerified, RegistrationAccepted, StipendDisbursed, StipendFailed
from services.disbursement import domain, stipends
from services.disbursement.adapters.provider import (
    AmbiguousPayoutError,
    ItemOutcome,
    Payout,
    PayoutItem,
    PayoutProvider,
    PermanentPayoutError,
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
        logger.debug("stipend.reserved", payment_id=str(payment_id))
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


LEASE_MARGIN_SECONDS = 10.0


@dataclass
class PayoutWorker:
    """Pays reserved stipends in three steps, so that no transaction is open while the provider is
    asked: claim a pass of them (one short transaction), pay them in batches (no transaction), then
    write every outcome with its outbox event (one short transaction). A payment's failure never
    holds up the others."""

    pool: asyncpg.Pool
    queries: Queries
    provider: PayoutProvider
    runtime_queries: Any
    data_key: bytes
    batch_size_max: int
    """Stipends claimed per pass."""
    batch_items_max: int
    """Stipends per provider batch call."""
    concurrency_max: int
    """Provider batch calls in flight at once."""
    call_seconds_max: float
    """The longest one batch call can take (its lookups, posts and pauses, at their longest)."""

    def lease_seconds(self) -> float:
        """Long enough for a whole pass: every wave of `concurrency_max` calls, each at its longest."""
        calls = -(-self.batch_size_max // self.batch_items_max)
        waves = -(-calls // self.concurrency_max)
        return self.call_seconds_max * waves + LEASE_MARGIN_SECONDS

    async def pay_reserved(self) -> int:
        lease_id = uuid4()
        async with self.pool.acquire() as connection, connection.transaction():
            claimed = await fetch_all(
                self.queries.payments.claim_reserved(
                    connection, lease_id=lease_id, lease_seconds=self.lease_seconds(), limit=self.batch_size_max
                )
            )
        if not claimed:
            return 0
        outcomes, methods = await self._pay(claimed)
        payment_ids = [row["payment_id"] for row in claimed]
        async with self.pool.acquire() as connection, connection.transaction():
            held = await fetch_all(
                self.queries.payments.lock_claimed(connection, payment_ids=payment_ids, lease_id=lease_id)
            )
            uow = UnitOfWork(connection, "disbursement", self.runtime_queries)
            for payment in held:
                key = str(payment["payment_id"])
                with structlog.contextvars.bound_contextvars(
                    case_id=str(payment["case_id"]),
                    correlationid=str(payment["correlationid"]),
                    event_type=StipendDisbursed.TOPIC,
                ):
                    await self._settle(uow, payment, outcomes.get(key, _UNANSWERED), methods.get(key, ""))
            await self.queries.payments.release_claims(connection, payment_ids=payment_ids, lease_id=lease_id)
            await uow.flush()
        counted = Counter(_payout_outcome(outcomes.get(str(payment["payment_id"]), _UNANSWERED)) for payment in held)
        for outcome, count in counted.items():  # committed
            metrics.PAYOUTS.labels(outcome).inc(count)
        logger.info("payout.pass", claimed=len(claimed), settled=len(held), **counted)
        return len(claimed)

    async def _pay(self, claimed: list[Any]) -> tuple[dict[str, ItemOutcome], dict[str, str]]:
        """Every claimed payment's outcome and payout method, keyed by payment id."""
        outcomes: dict[str, ItemOutcome] = {}
        methods: dict[str, str] = {}
        items: list[PayoutItem] = []
        for row in claimed:
            key = str(row["payment_id"])
            try:
                person = crypto.unseal(self.data_key, row["sealed"], bound_to=str(row["case_id"]))
            except crypto.UNSEAL_ERRORS:
                outcomes[key] = PermanentPayoutError(domain.FAILED_INSTRUMENT_UNREADABLE)
                continue
            instrument = person["payout"]
            methods[key] = instrument["method"]
            items.append(PayoutItem(key, row["amount"], row["currency"], instrument["method"], instrument))
        sent_before = {str(row["payment_id"]) for row in claimed if row["earlier_claims"] > 0}
        limiter = asyncio.Semaphore(self.concurrency_max)

        async def pay(batch: list[PayoutItem]) -> dict[str, ItemOutcome]:
            async with limiter:
                return await self.provider.pay_batch(batch, resolve_first=sent_before)

        batches = [items[first : first + self.batch_items_max] for first in range(0, len(items), self.batch_items_max)]
        for answered in await asyncio.gather(*(pay(batch) for batch in batches)):
            outcomes.update(answered)
        return outcomes, methods

    async def _settle(self, uow: UnitOfWork, payment: Any, outcome: ItemOutcome, method: str) -> None:
        if isinstance(outcome, Payout):
            await stipends.apply_provider_status(uow, self.queries, payment, method, outcome)
        elif payment["status"] != "reserved":
            return  # a callback settled it meanwhile
        elif isinstance(outcome, PermanentPayoutError):
            logger.error("stipend.payout_refused", payment_id=str(payment["payment_id"]), detail=str(outcome))
            await stipends.void(uow, self.queries, payment, outcome.code)
        else:
            # Still reserved; the next pass asks the provider about this key before paying.
            error = f"{type(outcome).__name__}: {outcome}"
            await self.queries.payments.note_payout_error(uow.connection, payment_id=payment["payment_id"], error=error)
            logger.warning("stipend.payout_unresolved", payment_id=str(payment["payment_id"]), error=error)

    async def release_held(self) -> int:
        async with self.pool.acquire() as connection, connection.transaction():
            return await stipends.release_held(connection, self.queries, limit=self.batch_size_max)


_UNANSWERED = AmbiguousPayoutError("the provider's answer left this key out")


def _payout_outcome(outcome: ItemOutcome) -> str:
    if isinstance(outcome, PermanentPayoutError):
        return "refused"
    if isinstance(outcome, Exception):
        return "unresolved"
    return outcome.status


async def read_gauges(connection: Any, *, queries: Queries) -> None:
    """Disbursement's part of /metrics: what waits for the provider or for money, and the budget left."""
    waiting = await queries.payments.waiting_payments(connection)
    metrics.PAYMENTS_WAITING.labels("reserved").set(waiting["reserved"])
    metrics.PAYMENTS_WAITING.labels("held").set(waiting["held"])
    metrics.PAYMENTS_WAITING.labels("callback").set(await queries.payments.unapplied_callbacks(connection))
    available = await queries.ledger.available(connection, code=domain.BUDGET_ACCOUNT)
    if available is not None:
        metrics.BUDGET_AVAILABLE.set(float(available))
