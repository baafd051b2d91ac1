"""Registration handlers: open a case, refuse an application, or repeat the first outcome."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import structlog

from contracts.envelope import Envelope
from contracts.events import (
    CaseWithdrawn,
    RegistrationAccepted,
    RegistrationRejected,
    RegistrationSubmitted,
    RejectionReason,
)
from contracts.registry import PAYLOAD_TYPES
from services.registration import domain
from services.runtime import casekeys, crypto
from services.runtime.db import fetch_all
from services.runtime.ids import new_id
from services.runtime.messages import Undeliverable, now
from services.runtime.uow import UnitOfWork

logger = structlog.get_logger("homeward.registration")


@dataclass(frozen=True)
class Keys:
    identity_secret: bytes
    readers: Mapping[str, crypto.Keyring]
    """The readers' program keys by purpose (casekeys.TRAVELER, casekeys.PAYOUT): each case's
    parts are wrapped with them; registration opens none of them again."""


Outcome = RegistrationAccepted | RegistrationRejected


async def handle_submitted(
    events: list[Envelope[RegistrationSubmitted]], uow: UnitOfWork, *, queries: Any, keys: Keys
) -> None:
    """A run of submissions, decided in order exactly as if one at a time, in a handful of
    statements: claim the application ids, claim the identities of the eligible, open the cases,
    record the outcomes. An application seen before (earlier in the run, or in an earlier batch)
    is answered with its first outcome again."""
    connection = uow.connection
    claimed = {row["application_id"] for row in await fetch_all(queries.claim_applications(
        connection,
        application_ids=[event.data.application_id for event in events],
        correlationids=[event.correlationid for event in events],
    ))}  # fmt: skip
    first: dict[UUID, Envelope[RegistrationSubmitted]] = {}
    for event in events:
        if event.data.application_id in claimed:
            first.setdefault(event.data.application_id, event)
    decided = await _decide_all(uow, queries, keys, list(first.values()))
    earlier = [event.data.application_id for event in events if event.data.application_id not in decided]
    stored = {row["application_id"]: row for row in await fetch_all(
        queries.application_outcomes(connection, application_ids=earlier)
    )} if earlier else {}  # fmt: skip
    for event in events:
        application_id = event.data.application_id
        if first.get(application_id) is event:
            outcome, correlationid = decided[application_id], event.correlationid
        elif application_id in decided:  # the same application again, later in this run
            outcome, correlationid = decided[application_id], first[application_id].correlationid
        else:
            row = stored[application_id]
            outcome, correlationid = _stored(row), row["correlationid"]
        uow.emit(outcome, correlationid=correlationid, causationid=event.id)
        _log_outcome(outcome, correlationid, repeated=first.get(application_id) is not event)


async def _decide_all(
    uow: UnitOfWork, queries: Any, keys: Keys, fresh: list[Envelope[RegistrationSubmitted]]
) -> dict[UUID, Outcome]:
    """The outcome of each application seen for the first time, recorded (not yet emitted)."""
    decided: dict[UUID, Outcome] = {}
    eligible: list[tuple[RegistrationSubmitted, str, UUID]] = []
    for event in fresh:
        application = event.data
        if refusals := domain.eligibility_refusals(application):
            decided[application.application_id] = _rejected(application.application_id, refusals)
            continue
        normalized = domain.normalized_document(application.identity_document)
        eligible.append((application, crypto.identity_key(keys.identity_secret, normalized), new_id()))
    if eligible:
        decided |= await _claim_identities(uow, queries, keys, eligible)
    await _record(uow, queries, decided)
    return decided


async def _record(uow: UnitOfWork, queries: Any, decided: dict[UUID, Outcome]) -> None:
    """Records outcomes, so that a resubmission repeats them."""
    if decided:
        await queries.record_outcomes(
            uow.connection,
            application_ids=list(decided),
            outcome_topics=[outcome.TOPIC for outcome in decided.values()],
            outcome_data=[outcome.model_dump_json() for outcome in decided.values()],
        )


def _stored(row: Any) -> Outcome:
    """A recorded outcome, read back as the event it was."""
    outcome: Outcome = PAYLOAD_TYPES[row["outcome_topic"]].model_validate(row["outcome_data"])
    return outcome


async def _claim_identities(
    uow: UnitOfWork, queries: Any, keys: Keys, eligible: list[tuple[RegistrationSubmitted, str, UUID]]
) -> dict[UUID, Outcome]:
    """One case per person, ever: the first to claim an identity opens a case; the others are
    refused as duplicates naming the case that holds it."""
    won = {row["identity_key"]: row["case_id"] for row in await fetch_all(queries.claim_identities(
        uow.connection,
        identity_keys=[identity_key for _, identity_key, _ in eligible],
        case_ids=[case_id for _, _, case_id in eligible],
    ))}  # fmt: skip
    lost = [identity_key for _, identity_key, _ in eligible if identity_key not in won]
    holders = {row["identity_key"]: row["case_id"] for row in await fetch_all(
        queries.identity_holders(uow.connection, identity_keys=lost)
    )} if lost else {}  # fmt: skip
    decided: dict[UUID, Outcome] = {}
    opened: list[RegistrationAccepted] = []
    consents: list[tuple[str, datetime]] = []  # each opened case's consent: text version, and when
    for application, identity_key, case_id in eligible:
        holder = won.get(identity_key) or holders.get(identity_key)
        if holder != case_id:
            duplicate = domain.Refusal("duplicate_registration", "identity_document", "this person already has a case")
            decided[application.application_id] = _rejected(application.application_id, [duplicate], holder)
            continue
        sealed = casekeys.seal_case(keys.readers, domain.sealed_contents(application), case_id=str(case_id))
        accepted = RegistrationAccepted(
            case_id=case_id,
            application_id=application.application_id,
            identity_key=identity_key,
            origin_airport=application.current_location.nearest_airport,
            destination_country=application.destination.country,
            destination_airport=application.destination.airport,
            sealed=sealed,
            accepted_at=now(),
        )
        decided[application.application_id] = accepted
        opened.append(accepted)
        consents.append((application.consent.version, application.submitted_at))
    if opened:
        await queries.open_cases(
            uow.connection,
            case_ids=[case.case_id for case in opened],
            application_ids=[case.application_id for case in opened],
            identity_keys=[case.identity_key for case in opened],
            sealed=[case.sealed for case in opened],
            consent_versions=[version for version, _ in consents],
            consented_ats=[moment for _, moment in consents],
        )
    return decided


def _rejected(application_id: UUID, refusals: list[domain.Refusal], duplicate_of: UUID | None = None) -> Outcome:
    return RegistrationRejected(
        application_id=application_id,
        reasons=tuple(RejectionReason(code=r.code, field=r.field, message=r.message) for r in refusals),
        duplicate_of_case_id=duplicate_of,
        rejected_at=now(),
    )


def _log_outcome(outcome: Outcome, correlationid: UUID, *, repeated: bool) -> None:
    log = logger.bind(application_id=outcome.application_id, correlationid=correlationid)
    if repeated:
        log.debug("registration.resubmission_answered", outcome=outcome.TOPIC)
    elif isinstance(outcome, RegistrationAccepted):
        log.debug("registration.accepted", case_id=outcome.case_id)
    else:
        log.debug("registration.rejected", codes=[reason.code for reason in outcome.reasons])


async def handle_invalid_submission(bad: Undeliverable, uow: UnitOfWork, *, queries: Any) -> None:
    """A submission that failed validation still gets an answer when its application id is readable:
    refused as `invalid_payload`, or, for an application seen before, its first outcome again."""
    if bad.application_id is None:
        return
    application_id, correlationid = bad.application_id, bad.correlationid or new_id()
    claimed = await fetch_all(queries.claim_applications(
        uow.connection, application_ids=[application_id], correlationids=[correlationid]
    ))  # fmt: skip
    outcome: Outcome
    if claimed:
        outcome = _rejected(application_id, [domain.Refusal("invalid_payload", bad.field, bad.detail)])
        await _record(uow, queries, {application_id: outcome})
    else:
        [row] = await fetch_all(queries.application_outcomes(uow.connection, application_ids=[application_id]))
        outcome, correlationid = _stored(row), row["correlationid"]
    uow.emit(outcome, correlationid=correlationid, causationid=bad.event_id)
    _log_outcome(outcome, correlationid, repeated=not claimed)


async def handle_withdrawn(events: list[Envelope[CaseWithdrawn]], uow: UnitOfWork, *, queries: Any) -> None:
    """A run of withdrawn cases (arrival decides withdrawals): each identity is free again, so a later
    application for the same document may open a new case."""
    withdrawn = await fetch_all(
        queries.withdraw_cases(uow.connection, case_ids=sorted({event.data.case_id for event in events}))
    )
    for row in withdrawn:
        logger.info("registration.identity_released", case_id=row["case_id"])
