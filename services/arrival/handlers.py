"""Arrival: keep cases, bookings, evidence and withdrawal requests in any order; decide each case
once: verified (and attested), rejected, or withdrawn (contract v1.1).

A case has one outcome, its row in `outcomes`: a verification and a withdrawal of one case both
insert it, and the primary key lets only the first commit hold. Disbursement pays verified
arrivals only, so a withdrawn case is never paid, and a verified one is never withdrawn.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import structlog

from contracts import attestation, signing
from contracts.envelope import Envelope
from contracts.events import (
    AppCheckIn,
    ArrivalAttested,
    ArrivalRejected,
    ArrivalVerified,
    CarrierRecord,
    CaseWithdrawn,
    PartnerOfficeRecord,
    RegistrationAccepted,
    StipendDisbursed,
    TravelBooked,
    WithdrawalRefused,
    WithdrawalRequested,
)
from services.arrival import domain
from services.runtime.consumer import Refusal
from services.runtime.db import fetch_all
from services.runtime.messages import Decoded, now
from services.runtime.uow import ServiceDatabase, UnitOfWork

logger = structlog.get_logger("homeward.arrival")


@dataclass(frozen=True)
class Policy:
    """How arrival decides: the evidence window, the key that signs attestations (None: none are
    issued, as in tests of the policy alone), and how long a withdrawal waits for its case."""

    window: timedelta
    signer: attestation.Signer | None = None
    withdrawal_case_wait: timedelta = timedelta(minutes=10)


async def handle_accepted(
    events: list[Envelope[RegistrationAccepted]], uow: UnitOfWork, *, queries: Any, policy: Policy
) -> None:
    case_ids = [event.data.case_id for event in events]
    withdrawals_waiting = await queries.remember_cases(
        uow.connection,
        case_ids=case_ids,
        correlationids=[event.correlationid for event in events],
        destination_countries=[event.data.destination_country for event in events],
        accepted_event_ids=[event.id for event in events],
        identity_keys=[event.data.identity_key for event in events],
    )
    if withdrawals_waiting:  # requests that came before their case
        await decide_withdrawals(uow, queries, case_ids)
    await evaluate(uow, queries, [(event.data.case_id, event.id, None) for event in events], policy=policy)


async def handle_booked(events: list[Envelope[TravelBooked]], uow: UnitOfWork, *, queries: Any, policy: Policy) -> None:
    await queries.remember_bookings(
        uow.connection,
        case_ids=[event.data.case_id for event in events],
        flight_numbers=[event.data.flight_number for event in events],
        scheduled_departures=[event.data.scheduled_departure for event in events],
        scheduled_arrivals=[event.data.scheduled_arrival for event in events],
        booked_event_ids=[event.id for event in events],
    )
    await evaluate(uow, queries, [(event.data.case_id, event.id, None) for event in events], policy=policy)


async def handle_evidence(
    events: list[Envelope[AppCheckIn | CarrierRecord | PartnerOfficeRecord]],
    uow: UnitOfWork,
    *,
    queries: Any,
    policy: Policy,
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
    await evaluate(uow, queries, arrived, policy=policy)


async def handle_disbursed(events: list[Envelope[StipendDisbursed]], uow: UnitOfWork, *, queries: Any) -> None:
    """A verified case was paid: a withdrawal asked for later is refused `already_paid`."""
    await queries.mark_paid(uow.connection, case_ids=sorted({event.data.case_id for event in events}))


# Withdrawal (contract v1.1) --------------------------------------------------------------------


async def handle_withdrawal_requested(
    events: list[Envelope[WithdrawalRequested]], uow: UnitOfWork, *, queries: Any
) -> None:
    """A run of withdrawal requests, kept by one insert: new ones are decided now where the case is
    known (the others wait for it); a request seen before is answered as it was, if it was."""
    received = now()
    new = {row["request_id"] for row in await fetch_all(queries.remember_withdrawal_requests(
        uow.connection,
        request_ids=[event.data.request_id for event in events],
        case_ids=[event.data.case_id for event in events],
        channels=[event.data.channel for event in events],
        reasons=[event.data.reason for event in events],
        requested_ats=[event.data.requested_at for event in events],
        received_ats=[received] * len(events),
        correlationids=[event.correlationid for event in events],
        event_ids=[event.id for event in events],
    ))}  # fmt: skip
    again = [event for event in events if event.data.request_id not in new]
    if again:
        answers = {row["request_id"]: row for row in await fetch_all(queries.withdrawal_answers(
            uow.connection, request_ids=[event.data.request_id for event in again]
        ))}  # fmt: skip
        for event in again:
            row = answers[event.data.request_id]
            if row["decision"] is not None:  # else it still waits for its case
                _answer(uow, row, row["decision"], row["booking_cancelled"], cause=event.id, at=row["decided_at"])
    await decide_withdrawals(uow, queries, [event.data.case_id for event in events if event.data.request_id in new])


def _answer(
    uow: UnitOfWork,
    request: Any,
    decision: str,
    booking_cancelled: bool | None,
    *,
    cause: UUID | None,
    at: datetime,
) -> None:
    """Emits a request's answer: case.withdrawn.v1, or case.withdrawal_refused.v1 with its reason."""
    outcome: CaseWithdrawn | WithdrawalRefused
    if decision == domain.WITHDRAWN:
        outcome = CaseWithdrawn(case_id=request["case_id"], request_id=request["request_id"],
                                booking_cancelled=bool(booking_cancelled), withdrawn_at=at)  # fmt: skip
    else:
        outcome = WithdrawalRefused(case_id=request["case_id"], request_id=request["request_id"],
                                    reason=decision, refused_at=at)  # fmt: skip
    uow.emit(outcome, correlationid=request["correlationid"], causationid=cause)
    logger.info(
        "arrival.withdrawal_decided", case_id=request["case_id"], correlationid=request["correlationid"],
        decision=decision,
    )  # fmt: skip


async def decide_withdrawals(uow: UnitOfWork, queries: Any, case_ids: list[UUID]) -> None:
    """Decides the waiting requests of these cases that arrival knows, oldest first, under the
    contract's rules (`domain.withdrawal_decision`). A case to withdraw gets its outcome by the same
    insert a verification makes: if a verification committed first, the request is refused."""
    if not case_ids:
        return
    waiting = await fetch_all(queries.waiting_withdrawals(uow.connection, case_ids=list(dict.fromkeys(case_ids))))
    if not waiting:
        return
    outcomes: dict[UUID, tuple[str, datetime | None]] = {
        row["case_id"]: (row["outcome"], row["paid_at"]) for row in waiting if row["outcome"] is not None
    }
    booked = {row["case_id"] for row in waiting if row["scheduled_departure"] is not None}
    to_withdraw = list(dict.fromkeys(
        row["case_id"] for row in waiting
        if row["case_id"] not in outcomes and not domain.departed(row["scheduled_departure"], row["received_at"])
    ))  # fmt: skip
    withdrawn = await _decide(uow, queries, dict.fromkeys(to_withdraw), outcome=domain.WITHDRAWN)
    for case_id in withdrawn:
        outcomes[case_id] = (domain.WITHDRAWN, None)
    if lost := [case_id for case_id in to_withdraw if case_id not in withdrawn]:
        # Another transaction gave these cases their outcome first (a verification, the sweeper).
        for row in await fetch_all(queries.outcomes_of(uow.connection, case_ids=lost)):
            outcomes[row["case_id"]] = (row["outcome"], row["paid_at"])
    decisions = []
    for row in waiting:
        outcome, paid_at = outcomes.get(row["case_id"], (None, None))
        decision = domain.withdrawal_decision(
            outcome, paid=paid_at is not None, departed=domain.departed(row["scheduled_departure"], row["received_at"])
        )
        cancelled = row["case_id"] in booked if decision == domain.WITHDRAWN else None
        decisions.append((row, decision, cancelled))
    decided_at = now()  # what the answer says, and what a resent request is answered with
    await queries.record_withdrawal_decisions(
        uow.connection,
        request_ids=[row["request_id"] for row, _, _ in decisions],
        decisions=[decision for _, decision, _ in decisions],
        bookings_cancelled=[cancelled for _, _, cancelled in decisions],
        decided_at=decided_at,
    )
    for row, decision, cancelled in decisions:
        _answer(uow, row, decision, cancelled, cause=row["event_id"], at=decided_at)


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
    uow: UnitOfWork, queries: Any, triggers: list[tuple[UUID, UUID, UUID | None]], *, policy: Policy
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
        verdict = domain.verify(_facts(case), known.get(case_id, []), policy.window)
        if verdict is not None:
            verdicts[case_id] = (verdict, cause)
    if not verdicts:
        return
    verified_at = now()
    tokens = {
        case_id: token
        for case_id, (verdict, _) in verdicts.items()
        if policy.signer is not None and (token := _attest(policy.signer, cases[case_id], verdict, verified_at))
    }
    rules = {case_id: verdict.rule for case_id, (verdict, _) in verdicts.items()}
    key_id = policy.signer.key_id if policy.signer is not None else ""
    decided = await _decide(uow, queries, rules, outcome="verified", attestations=tokens, key_id=key_id)
    for case_id, (verdict, cause) in verdicts.items():
        if case_id not in decided:
            continue  # another transaction decided it first (a withdrawal, the sweeper)
        case = cases[case_id]
        verified = ArrivalVerified(
            case_id=case_id, evidence_ids=verdict.evidence_ids, rule=verdict.rule, verified_at=verified_at
        )
        verified_id = uow.emit(verified, correlationid=case["correlationid"], causationid=cause).id
        logger.debug("arrival.verified", case_id=case_id, correlationid=case["correlationid"], rule=verdict.rule)
        if case_id in tokens:
            issued = ArrivalAttested(case_id=case_id, attestation=tokens[case_id], key_id=key_id, issued_at=verified_at)
            uow.emit(issued, correlationid=case["correlationid"], causationid=verified_id)


def _attest(signer: attestation.Signer, case: Any, verdict: domain.Verdict, verified_at: datetime) -> str | None:
    """The case's departure attestation: who (the identity key), where to, the day the booked
    flight left (UTC), and how arrival was verified; none for a case accepted before attestations
    (arrival never learnt its identity key)."""
    if case["identity_key"] is None:
        logger.warning("arrival.attestation_unavailable", case_id=case["case_id"], reason="no identity key")
        return None
    claims = attestation.Claims(
        case_id=case["case_id"],
        identity_key=case["identity_key"],
        destination_country=case["destination_country"],
        departed_on=case["scheduled_departure"].astimezone(UTC).date(),
        verified_at=verified_at,
        rule=verdict.rule,
    )
    return signer.sign(claims)


def _facts(case: Any) -> domain.CaseFacts:
    return domain.CaseFacts(
        destination_country=case["destination_country"],
        flight_number=case["flight_number"],
        scheduled_departure=case["scheduled_departure"],
        scheduled_arrival=case["scheduled_arrival"],
    )


async def _decide(
    uow: UnitOfWork,
    queries: Any,
    rules: Mapping[UUID, str | None],
    *,
    outcome: str,
    attestations: Mapping[UUID, str] | None = None,
    key_id: str = "",
) -> set[UUID]:
    """Records an outcome for each case (with the rule that verified it, if any, and its attestation
    signed by `key_id`); returns the cases decided now."""
    if not rules:
        return set()
    attested = attestations or {}
    decided = queries.decide(
        uow.connection, case_ids=list(rules), outcome=outcome, rules=list(rules.values()),
        attested_case_ids=list(attested), key_ids=[key_id] * len(attested), tokens=list(attested.values()),
    )  # fmt: skip
    return {row["case_id"] for row in await fetch_all(decided)}


@dataclass
class WindowSweeper:
    """Rejects cases whose evidence window closed without a verdict, and refuses `unknown_case`
    the withdrawal requests whose case did not become known in time."""

    database: ServiceDatabase
    queries: Any
    policy: Policy
    batch_size_max: int

    async def sweep(self) -> int:
        return await self._reject_expired() + await self._refuse_unknown()

    async def _refuse_unknown(self) -> int:
        async with self.database.unit() as uow:
            unknown = await fetch_all(self.queries.unknown_case_withdrawals(
                uow.connection, wait_seconds=self.policy.withdrawal_case_wait.total_seconds(),
                limit=self.batch_size_max,
            ))  # fmt: skip
            refused_at = now()
            if unknown:
                await self.queries.record_withdrawal_decisions(
                    uow.connection,
                    request_ids=[row["request_id"] for row in unknown],
                    decisions=[domain.UNKNOWN_CASE] * len(unknown),
                    bookings_cancelled=[None] * len(unknown),
                    decided_at=refused_at,
                )
            for row in unknown:
                _answer(uow, row, domain.UNKNOWN_CASE, None, cause=row["event_id"], at=refused_at)
        return len(unknown)

    async def _reject_expired(self) -> int:
        async with self.database.unit() as uow:
            expired = await fetch_all(
                self.queries.expired_cases(
                    uow.connection, window_seconds=self.policy.window.total_seconds(), limit=self.batch_size_max
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
