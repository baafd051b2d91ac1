"""Arrival: keep cases, bookings and evidence in any order; decide under the v1 policy."""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from contracts.envelope import Envelope
from contracts.events import (
    AppCheckIn,
    ArrivalRejected,
    ArrivalVerified,
    CarrierRecord,
    PartnerOfficeRecord,
    RegistrationAccepted,
    TravelBooked,
)
from services.arrival import domain
from services.runtime.db import fetch_all
from services.runtime.messages import now
from services.runtime.uow import UnitOfWork

logger = structlog.get_logger("homeward.arrival")


async def handle_accepted(
    event: Envelope[RegistrationAccepted], uow: UnitOfWork, *, queries: Any, window: timedelta
) -> None:
    case = event.data
    await queries.remember_case(
        uow.connection,
        case_id=case.case_id,
        correlationid=event.correlationid,
        destination_country=case.destination_country,
        accepted_event_id=event.id,
    )
    await evaluate(uow, queries, case.case_id, cause=event.id, window=window)


async def handle_booked(event: Envelope[TravelBooked], uow: UnitOfWork, *, queries: Any, window: timedelta) -> None:
    booking = event.data
    await queries.remember_booking(
        uow.connection,
        case_id=booking.case_id,
        flight_number=booking.flight_number,
        scheduled_departure=booking.scheduled_departure,
        scheduled_arrival=booking.scheduled_arrival,
        booked_event_id=event.id,
    )
    await evaluate(uow, queries, booking.case_id, cause=event.id, window=window)


async def handle_evidence(
    event: Envelope[AppCheckIn | CarrierRecord | PartnerOfficeRecord],
    uow: UnitOfWork,
    *,
    queries: Any,
    window: timedelta,
) -> None:
    evidence = event.data
    new = await queries.remember_evidence(
        uow.connection,
        evidence_id=evidence.evidence_id,
        case_id=evidence.case_id,
        source=evidence.source,
        observed_at=evidence.observed_at,
        country=evidence.country,
        identity_match_score=getattr(evidence, "identity_match_score", None),
        flight_number=getattr(evidence, "flight_number", None),
        status=getattr(evidence, "status", None),
        document_checked=getattr(evidence, "document_checked", None),
    )
    if new is None:
        logger.debug("arrival.evidence_duplicate")
        return
    logger.debug("arrival.evidence_received", source=evidence.source)
    await evaluate(uow, queries, evidence.case_id, cause=event.id, window=window)


async def evaluate(uow: UnitOfWork, queries: Any, case_id: UUID, *, cause: UUID, window: timedelta) -> None:
    """Decides a case once its facts are known; evidence that came early is counted now."""
    case = await queries.undecided_case(uow.connection, case_id=case_id)
    if case is None:
        return
    facts = domain.CaseFacts(
        destination_country=case["destination_country"],
        flight_number=case["flight_number"],
        scheduled_departure=case["scheduled_departure"],
        scheduled_arrival=case["scheduled_arrival"],
    )
    rows = await fetch_all(queries.evidence_for_case(uow.connection, case_id=case_id))
    verdict = domain.verify(facts, [domain.Evidence(**dict(row)) for row in rows], window)
    if verdict is None:
        return
    if await queries.decide(uow.connection, case_id=case_id, outcome="verified", rule=verdict.rule) is None:
        return
    verified = ArrivalVerified(case_id=case_id, evidence_ids=verdict.evidence_ids, rule=verdict.rule, verified_at=now())
    uow.emit(verified, correlationid=case["correlationid"], causationid=cause)
    logger.debug("arrival.verified", case_id=str(case_id), rule=verdict.rule)


@dataclass
class WindowSweeper:
    """Rejects cases whose evidence window closed without a verdict."""

    pool: asyncpg.Pool
    queries: Any
    runtime_queries: Any
    window: timedelta
    batch_size_max: int

    async def sweep(self) -> int:
        async with self.pool.acquire() as connection, connection.transaction():
            expired = await fetch_all(
                self.queries.expired_cases(
                    connection, window_seconds=self.window.total_seconds(), limit=self.batch_size_max
                )
            )
            uow = UnitOfWork(connection, "arrival", self.runtime_queries)
            for case in expired:
                await self.queries.decide(connection, case_id=case["case_id"], outcome="rejected", rule=None)
                rejected = ArrivalRejected(
                    case_id=case["case_id"], reason="verification_window_expired", rejected_at=now()
                )
                uow.emit(rejected, correlationid=case["correlationid"], causationid=case["booked_event_id"])
                logger.info(
                    "arrival.rejected",
                    case_id=str(case["case_id"]),
                    correlationid=str(case["correlationid"]),
                    event_type=ArrivalRejected.TOPIC,
                )
            await uow.flush()
        return len(expired)
