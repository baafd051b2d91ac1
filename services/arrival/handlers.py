"""Arrival: keep cases, bookings and evidence in any order; decide under the v1 policy."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

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
from services.runtime.uow import ServiceDatabase, UnitOfWork

logger = structlog.get_logger("homeward.arrival")


async def handle_accepted(
    events: list[Envelope[RegistrationAccepted]], uow: UnitOfWork, *, queries: Any, window: timedelta
) -> None:
    await queries.remember_cases(
        uow.connection,
        case_ids=[event.data.case_id for event in events],
        correlationids=[event.correlationid for event in events],
        destination_countries=[event.data.destination_country for event in events],
        accepted_event_ids=[event.id for event in events],
    )
    await evaluate(uow, queries, [(event.data.case_id, event.id, None) for event in events], window=window)


async def handle_booked(
    events: list[Envelope[TravelBooked]], uow: UnitOfWork, *, queries: Any, window: timedelta
) -> None:
    await queries.remember_bookings(
        uow.connection,
        case_ids=[event.data.case_id for event in events],
        flight_numbers=[event.data.flight_number for event in events],
        scheduled_departures=[event.data.scheduled_departure for event in events],
        scheduled_arrivals=[event.data.scheduled_arrival for event in events],
        booked_event_ids=[event.id for event in events],
    )
    await evaluate(uow, queries, [(event.data.case_id, event.id, None) for event in events], window=window)


async def handle_evidence(
    events: list[Envelope[AppCheckIn | CarrierRecord | PartnerOfficeRecord]],
    uow: UnitOfWork,
    *,
    queries: Any,
    window: timedelta,
) -> None:
    """A run of evidence, kept by one insert; each new piece may decide its case."""
    pieces = [event.data for event in events]
    new = {row["evidence_id"] for row in await fetch_all(queries.remember_evidence(
        uow.connection,
        evidence_ids=[piece.evidence_id for piece in pieces],
        case_ids=[piece.case_id for piece in pieces],
        sources=[piece.source for piece in pieces],
        observed_ats=[piece.observed_at for piece in pieces],
        countries=[piece.country for piece in pieces],
        identity_match_scores=[getattr(piece, "identity_match_score", None) for piece in pieces],
        flight_numbers=[getattr(piece, "flight_number", None) for piece in pieces],
        statuses=[getattr(piece, "status", None) for piece in pieces],
        documents_checked=[getattr(piece, "document_checked", None) for piece in pieces],
    ))}  # fmt: skip
    arrived: list[tuple[UUID, UUID, UUID | None]] = []
    for event in events:
        log = logger.bind(case_id=event.data.case_id, correlationid=event.correlationid)
        if event.data.evidence_id not in new:
            log.debug("arrival.evidence_duplicate")
            continue
        new.discard(event.data.evidence_id)  # the same evidence twice in the run counts once
        log.debug("arrival.evidence_received", source=event.data.source)
        arrived.append((event.data.case_id, event.id, event.data.evidence_id))
    await evaluate(uow, queries, arrived, window=window)


async def evaluate(
    uow: UnitOfWork, queries: Any, triggers: list[tuple[UUID, UUID, UUID | None]], *, window: timedelta
) -> None:
    """Decides the cases whose facts are known, each exactly as if the run's events came one at a
    time: a trigger is (case, the event, the evidence it brought, if any), in the run's order; the
    event after which the policy first holds is the verdict's cause. Evidence that came early
    (before the case or its booking) is counted now."""
    case_ids = list(dict.fromkeys(case_id for case_id, _, _ in triggers))
    if not case_ids:
        return
    cases = {row["case_id"]: row for row in await fetch_all(queries.undecided_cases(uow.connection, case_ids=case_ids))}
    if not cases:
        return
    evidence: dict[UUID, list[domain.Evidence]] = {}
    for row in await fetch_all(queries.evidence_for_cases(uow.connection, case_ids=list(cases))):
        fields = dict(row)
        evidence.setdefault(fields.pop("case_id"), []).append(domain.Evidence(**fields))
    arriving = {evidence_id for _, _, evidence_id in triggers if evidence_id is not None}
    # Before the run, a case knew only the evidence that did not come in this run.
    known = {case_id: [piece for piece in pieces if piece.evidence_id not in arriving]
             for case_id, pieces in evidence.items()}  # fmt: skip
    by_id = {piece.evidence_id: piece for pieces in evidence.values() for piece in pieces}
    verdicts: dict[UUID, tuple[domain.Verdict, UUID]] = {}
    for case_id, cause, evidence_id in triggers:
        case = cases.get(case_id)
        if case is None or case_id in verdicts:
            continue
        if evidence_id is not None:
            known.setdefault(case_id, []).append(by_id[evidence_id])
        verdict = domain.verify(_facts(case), known.get(case_id, []), window)
        if verdict is not None:
            verdicts[case_id] = (verdict, cause)
    if not verdicts:
        return
    rules = {case_id: verdict.rule for case_id, (verdict, _) in verdicts.items()}
    decided = await _decide(uow, queries, rules, outcome="verified")
    for case_id, (verdict, cause) in verdicts.items():
        if case_id not in decided:
            continue
        verified = ArrivalVerified(
            case_id=case_id, evidence_ids=verdict.evidence_ids, rule=verdict.rule, verified_at=now()
        )
        uow.emit(verified, correlationid=cases[case_id]["correlationid"], causationid=cause)
        logger.debug(
            "arrival.verified", case_id=case_id, correlationid=cases[case_id]["correlationid"],
            rule=verdict.rule,
        )  # fmt: skip


def _facts(case: Any) -> domain.CaseFacts:
    return domain.CaseFacts(
        destination_country=case["destination_country"],
        flight_number=case["flight_number"],
        scheduled_departure=case["scheduled_departure"],
        scheduled_arrival=case["scheduled_arrival"],
    )


async def _decide(uow: UnitOfWork, queries: Any, rules: Mapping[UUID, str | None], *, outcome: str) -> set[UUID]:
    """Records an outcome for each case (with the rule that verified it, if any); returns the
    cases decided now."""
    if not rules:
        return set()
    decided = queries.decide(uow.connection, case_ids=list(rules), outcome=outcome, rules=list(rules.values()))
    return {row["case_id"] for row in await fetch_all(decided)}


@dataclass
class WindowSweeper:
    """Rejects cases whose evidence window closed without a verdict."""

    database: ServiceDatabase
    queries: Any
    window: timedelta
    batch_size_max: int

    async def sweep(self) -> int:
        async with self.database.unit() as uow:
            expired = await fetch_all(
                self.queries.expired_cases(
                    uow.connection, window_seconds=self.window.total_seconds(), limit=self.batch_size_max
                )
            )
            decided = await _decide(uow, self.queries, {case["case_id"]: None for case in expired}, outcome="rejected")
            for case in expired:
                if case["case_id"] not in decided:
                    continue
                rejected = ArrivalRejected(
                    case_id=case["case_id"], reason="verification_window_expired", rejected_at=now()
                )
                uow.emit(rejected, correlationid=case["correlationid"], causationid=case["booked_event_id"])
                logger.info(
                    "arrival.rejected",
                    case_id=case["case_id"],
                    correlationid=case["correlationid"],
                    event_type=ArrivalRejected.TOPIC,
                )
        return len(expired)
