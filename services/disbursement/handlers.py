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
from contracts.events import ArrivalVerified, RegistrationAccepted, StipendFailed
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
from services.runtime import casekeys, crypto, metrics, tracing
from services.runtime.db import fetch_all
from services.runtime.messages import now
from services.runtime.uow import ServiceDatabase, UnitOfWork

logger = structlog.get_logger("homeward.disbursement")


@dataclass(frozen=True)
class Program:
    amount: Decimal
    currency: str
    instrument_secret: bytes | None = None
    """Keys the payout instruments' fingerprints (contract v1.1 review holds); None: no such holds."""


async def handle_accepted(
    events: list[Envelope[RegistrationAccepted]],
    uow: UnitOfWork,
    *,
    queries: Queries,
    program: Program,
    data_key: crypto.Keyring,
) -> None:
    """A run of accepted cases, remembered by one insert with the payout part of `sealed` (its
    ciphertext with the case, its case key in `case_keys`) and its instrument's fingerprint; those
    already verified get their payment."""
    cases = [event.data for event in events]
    parts = [casekeys.take(case.sealed, casekeys.PAYOUT) for case in cases]
    await casekeys.keep_case_keys(uow, [case.case_id for case in cases], parts, data_key)
    await queries.payments.remember_cases(
        uow.connection,
        case_ids=[case.case_id for case in cases],
        identity_keys=[case.identity_key for case in cases],
        correlationids=[event.correlationid for event in events],
        sealed=[part.ciphertext for part in parts],
        accepted_event_ids=[event.id for event in events],
        fingerprints=[
            _fingerprint(data_key, program, case.case_id, part) for case, part in zip(cases, parts, strict=True)
        ],
    )
    await open_payments(uow, queries, [case.case_id for case in cases], program)


def _fingerprint(data_key: crypto.Keyring, program: Program, case_id: UUID, part: casekeys.Taken) -> str | None:
    """The case's instrument fingerprint; None where the part does not open (its payout fails
    then, as unreadable) or no instrument secret is set (no review holds)."""
    if program.instrument_secret is None:
        return None
    try:
        person = casekeys.open_taken(data_key, part, case_id=str(case_id), purpose=casekeys.PAYOUT)
    except crypto.UNSEAL_ERRORS:
        return None
    return domain.instrument_fingerprint(program.instrument_secret, person["payout"])


async def handle_verified(
    events: list[Envelope[ArrivalVerified]], uow: UnitOfWork, *, queries: Queries, program: Program
) -> None:
    """A run of verified arrivals, remembered by one insert; those already accepted get their payment."""
    await queries.payments.remember_verified(
        uow.connection,
        case_ids=[event.data.case_id for event in events],
        verified_event_ids=[event.id for event in events],
    )
    await open_payments(uow, queries, [event.data.case_id for event in events], program)


async def open_payments(uow: UnitOfWork, queries: Queries, case_ids: list[UUID], program: Program) -> None:
    """Once a case is both accepted and verified: one payment per identity, reserved or held, in
    the order the cases came (the budget goes to the earlier ones first)."""
    cases = await fetch_all(queries.payments.payable_cases(uow.connection, case_ids=list(dict.fromkeys(case_ids))))
    if not cases:
        return
    payment_ids = [domain.payment_id_for(case["case_id"]) for case in cases]
    created = await fetch_all(
        queries.payments.create_payments(
            uow.connection,
            payment_ids=payment_ids,
            case_ids=[case["case_id"] for case in cases],
            identity_keys=[case["identity_key"] for case in cases],
            correlationids=[case["correlationid"] for case in cases],
            cause_event_ids=[case["verified_event_id"] for case in cases],
            fingerprints=[case["instrument_fingerprint"] for case in cases],
            amount=program.amount,
            currency=program.currency,
        )
    )
    by_id = {payment["payment_id"]: payment for payment in created}
    payments = [by_id[payment_id] for payment_id in payment_ids if payment_id in by_id]
    refused = [case for case, payment_id in zip(cases, payment_ids, strict=True) if payment_id not in by_id]
    if refused:
        _refuse_second_stipends(uow, refused)
        await queries.payments.refuse(
            uow.connection, case_ids=[case["case_id"] for case in refused], reason=domain.REFUSED_IDENTITY_PAID
        )
    shared = await _shared_instruments(uow, queries, payments)
    paused = any(payment["paused"] for payment in payments)
    held = {
        payment["payment_id"]: domain.HELD_INSTRUMENT_SHARED if payment["payment_id"] in shared
        else domain.HELD_PROGRAM_PAUSED
        for payment in payments if payment["payment_id"] in shared or paused
    }  # fmt: skip
    await hold(uow, queries, [payment for payment in payments if payment["payment_id"] in held], held)
    payments = [payment for payment in payments if payment["payment_id"] not in held]
    for payment, reserved in zip(payments, await stipends.reserve(uow.connection, queries, payments), strict=True):
        if reserved:
            logger.debug(
                "stipend.reserved", payment_id=payment["payment_id"], case_id=payment["case_id"],
                correlationid=payment["correlationid"],
            )  # fmt: skip
        else:
            stipends.emit_held(uow, payment)


async def _shared_instruments(uow: UnitOfWork, queries: Queries, payments: list[Any]) -> set[UUID]:
    """The new payments whose instrument already went to another identity: each claimed its
    fingerprint as it was created (`create_payments`: the claims' primary key decides between
    concurrent ones); a claim it lost is looked up by one more statement."""
    lost = [payment for payment in payments if payment["claimed"] is False]
    if not lost:
        return set()
    holders = {row["fingerprint"]: row["identity_key"] for row in await fetch_all(queries.payments.instrument_holders(
        uow.connection, fingerprints=sorted({payment["fingerprint"] for payment in lost})
    ))}  # fmt: skip
    return {payment["payment_id"] for payment in lost if holders.get(payment["fingerprint"]) != payment["identity_key"]}


async def hold(uow: UnitOfWork, queries: Queries, payments: list[Any], reasons: dict[UUID, str]) -> None:
    """Holds payments for review or the pause (one statement per reason), each with its event."""
    for reason in sorted(set(reasons.values())):
        await queries.payments.hold_payments(
            uow.connection,
            payment_ids=[payment["payment_id"] for payment in payments if reasons[payment["payment_id"]] == reason],
            reason=reason,
        )
    for payment in payments:
        stipends.emit_held(uow, payment, reasons[payment["payment_id"]])


def _refuse_second_stipends(uow: UnitOfWork, cases: list[Any]) -> None:
    for case in cases:
        payment_id = domain.payment_id_for(case["case_id"])
        failed = StipendFailed(
            case_id=case["case_id"], payment_id=payment_id, reason=domain.REFUSED_IDENTITY_PAID, failed_at=now()
        )
        uow.emit(failed, correlationid=case["correlationid"], causationid=case["verified_event_id"])
        logger.warning(
            "stipend.refused", case_id=case["case_id"], correlationid=case["correlationid"],
            reason=domain.REFUSED_IDENTITY_PAID,
        )  # fmt: skip


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

    database: ServiceDatabase
    queries: Queries
    provider: PayoutProvider
    data_key: crypto.Keyring
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
        async with self.database.pool.acquire() as connection, connection.transaction():
            claimed = await fetch_all(
                self.queries.payments.claim_reserved(
                    connection, lease_id=lease_id, lease_seconds=self.lease_seconds(), limit=self.batch_size_max
                )
            )
        if not claimed:
            return 0
        traced = [(row["case_id"], row["correlationid"], row["cause_event_id"]) for row in claimed]
        with tracing.work(self.database.service, "pay stipend", traced):
            outcomes, methods = await self._pay(claimed)
            payment_ids = [row["payment_id"] for row in claimed]
            async with self.database.unit() as uow:
                held = await fetch_all(
                    self.queries.payments.lock_payments(uow.connection, payment_ids=payment_ids, lease_id=lease_id)
                )
                changes, unresolved = self._settle(held, outcomes, methods)
                await stipends.apply(uow, self.queries, changes)
                if unresolved:
                    await self.queries.payments.note_payout_errors(
                        uow.connection, payment_ids=list(unresolved), errors=list(unresolved.values())
                    )
                await self.queries.payments.release_claims(uow.connection, payment_ids=payment_ids, lease_id=lease_id)
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
                person = casekeys.opened(self.data_key, row, purpose=casekeys.PAYOUT)
            except crypto.UnknownKey as missing:
                # A key this process was not given: its configuration to fix, never the payment's
                # failure. Left out of the call, it stays reserved (unresolved) for the next pass.
                logger.error("payout.data_key_missing", payment_id=key, key_id=missing.key_id)
                continue
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

    def _settle(
        self, held: list[Any], outcomes: dict[str, ItemOutcome], methods: dict[str, str]
    ) -> tuple[list[stipends.Change], dict[UUID, str]]:
        """The pass's changes, and the payments the provider could not answer for (with why)."""
        changes: list[stipends.Change] = []
        unresolved: dict[UUID, str] = {}
        for payment in held:
            key = str(payment["payment_id"])
            outcome = outcomes.get(key, _UNANSWERED)
            log = logger.bind(payment_id=key, case_id=payment["case_id"], correlationid=payment["correlationid"])
            if isinstance(outcome, Payout):
                if (change := stipends.provider_status(payment, methods.get(key, ""), outcome)) is not None:
                    changes.append(change)
            elif payment["status"] != "reserved":
                continue  # a callback settled it meanwhile
            elif isinstance(outcome, PermanentPayoutError):
                log.error("stipend.payout_refused", detail=str(outcome))
                changes.append(stipends.voided(payment, outcome.code))
            else:
                # Still reserved; the next pass asks the provider about this key before paying.
                unresolved[payment["payment_id"]] = f"{type(outcome).__name__}: {outcome}"
                log.warning("stipend.payout_unresolved", error=unresolved[payment["payment_id"]])
        return changes, unresolved

    async def release_held(self) -> int:
        async with self.database.pool.acquire() as connection, connection.transaction():
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
