"""Arrival: keep cases, bookings and evidence in any order; decide under the v1 policy."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import structlog

from contracts import signing
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
from services.runtime.consumer import Refusal
from services.runtime.db import fetch_all
from services.runtime.messages import Decoded, now
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


EVIDENCE_UNAUTHENTICATED = "evidence_unauthenticated"
UNREGISTRABLE_ID = "\ufffd"
"""Stands for an `x-signer` no registered id can be (not UTF-8, unprintable, too long)."""
SIGNER_ID_SHOWN_CHARS_MAX = 100


async def admit_evidence(items: list[Decoded], uow: UnitOfWork, *, queries: Any) -> list[Refusal | None]:
    """Contract v1.1: evidence counts only when a registered, unrevoked signer for its source (and
    office) signed its exact bytes. One look-up for the batch's signers, in the batch's own
    transaction, so a revocation committed before the batch began is seen."""
    claims = [_signed(item) for item in items]
    signer_ids = sorted({claim.signer_id for claim in claims if claim.signer_id not in (None, UNREGISTRABLE_ID)})
    rows = await fetch_all(queries.signers_by_id(uow.connection, signer_ids=signer_ids)) if signer_ids else []
    signers = {row["signer_id"]: domain.Signer(**dict(row)) for row in rows}
    refusals: list[Refusal | None] = []
    for claim in claims:
        reason = domain.refusal(claim, signers.get(claim.signer_id) if claim.signer_id is not None else None)
        refusals.append(None if reason is None else Refusal(EVIDENCE_UNAUTHENTICATED, _detail(reason, claim)))
    return refusals


def _signed(item: Decoded) -> domain.Signed:
    record, data = item.record, item.envelope.data
    signer = record.header(signing.SIGNER_HEADER)
    signature = record.header(signing.SIGNATURE_HEADER)
    try:
        signer_id = signer.decode() if signer is not None else None
    except UnicodeDecodeError:
        signer_id = UNREGISTRABLE_ID  # not UTF-8: no registered id is (the CLI takes text), so unknown
    if signer_id is not None and not (len(signer_id) <= signing.SIGNER_ID_CHARS_MAX and signer_id.isprintable()):
        signer_id = UNREGISTRABLE_ID  # no registered id has such a form; never sent to the database (NUL)
    return domain.Signed(
        signer_id=signer_id,
        # A header that is there but is no signature is malformed, not missing.
        signature=None if signature is None else (signing.decode_signature(signature) or b""),
        value=record.value,
        source=data.source,
        office_code=getattr(data, "office_code", None),
        # "Received" is when the broker wrote it, where the topic stamps that; else now.
        received_at=record.appended_at or now(),
    )


def _detail(reason: str, claim: domain.Signed) -> str:
    """The dead letter's detail: the reason, and the signer named (printable, cut short), never
    anything of the evidence itself."""
    named = "".join(c if c.isprintable() else "?" for c in (claim.signer_id or ""))[:SIGNER_ID_SHOWN_CHARS_MAX]
    return f"{reason}: signer {named!r}" if claim.signer_id is not None else reason


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
