"""Registration handlers: open a case, refuse an application, or repeat the first outcome."""

from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import structlog

from contracts.envelope import Envelope
from contracts.events import (
    RegistrationAccepted,
    RegistrationRejected,
    RegistrationSubmitted,
    RejectionReason,
)
from contracts.registry import PAYLOAD_TYPES
from services.registration import domain
from services.runtime import crypto
from services.runtime.messages import Undeliverable, now
from services.runtime.uow import UnitOfWork

logger = structlog.get_logger("homeward.registration")


@dataclass(frozen=True)
class Keys:
    identity_secret: bytes
    data_key: bytes


async def handle_submitted(
    event: Envelope[RegistrationSubmitted], uow: UnitOfWork, *, queries: Any, keys: Keys
) -> None:
    application = event.data
    if not await _first_sight(uow, queries, application.application_id, event.correlationid, event.id):
        return
    refusals = domain.eligibility_refusals(application)
    if refusals:
        await _reject(uow, queries, application.application_id, refusals, event.correlationid, event.id)
        return
    identity_key = crypto.identity_key(keys.identity_secret, domain.normalized_document(application.identity_document))
    case_id = uuid4()
    holder = await queries.claim_identity(uow.connection, identity_key=identity_key, case_id=case_id)
    if holder is None:
        holder = await queries.identity_holder(uow.connection, identity_key=identity_key)
    if holder != case_id:
        duplicate = domain.Refusal("duplicate_registration", "identity_document", "this person already has a case")
        await _reject(uow, queries, application.application_id, [duplicate], event.correlationid, event.id, holder)
        return
    sealed = crypto.seal(keys.data_key, domain.sealed_contents(application), bound_to=str(case_id))
    await queries.open_case(
        uow.connection,
        case_id=case_id,
        application_id=application.application_id,
        identity_key=identity_key,
        sealed=sealed,
    )
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
    await _decide(uow, queries, accepted, event.correlationid, event.id)
    logger.debug("registration.accepted", case_id=str(case_id))


async def handle_invalid_submission(bad: Undeliverable, uow: UnitOfWork, *, queries: Any) -> None:
    """A submission that failed validation still gets an answer when its application id is readable."""
    if bad.application_id is None:
        return
    correlationid = bad.correlationid or uuid4()
    if not await _first_sight(uow, queries, bad.application_id, correlationid, bad.event_id):
        return
    refusal = domain.Refusal("invalid_payload", bad.field, bad.detail)
    await _reject(uow, queries, bad.application_id, [refusal], correlationid, bad.event_id)


async def _first_sight(
    uow: UnitOfWork, queries: Any, application_id: UUID, correlationid: UUID, cause: UUID | None
) -> bool:
    """Claims the application id; for one seen before, re-emits the first outcome and says so."""
    claimed = await queries.claim_application(
        uow.connection, application_id=application_id, correlationid=correlationid
    )
    if claimed is not None:
        return True
    first = await queries.application_outcome(uow.connection, application_id=application_id)
    payload = PAYLOAD_TYPES[first["outcome_topic"]].model_validate(first["outcome_data"])
    uow.emit(payload, correlationid=first["correlationid"], causationid=cause)
    logger.debug("registration.resubmission_answered", outcome=first["outcome_topic"])
    return False


async def _reject(
    uow: UnitOfWork,
    queries: Any,
    application_id: UUID,
    refusals: list[domain.Refusal],
    correlationid: UUID,
    cause: UUID | None,
    duplicate_of: UUID | None = None,
) -> None:
    rejected = RegistrationRejected(
        application_id=application_id,
        reasons=tuple(RejectionReason(code=r.code, field=r.field, message=r.message) for r in refusals),
        duplicate_of_case_id=duplicate_of,
        rejected_at=now(),
    )
    await _decide(uow, queries, rejected, correlationid, cause)
    logger.debug("registration.rejected", codes=[r.code for r in refusals])


async def _decide(
    uow: UnitOfWork,
    queries: Any,
    outcome: RegistrationAccepted | RegistrationRejected,
    correlationid: UUID,
    cause: UUID | None,
) -> None:
    """Records the outcome so a resubmission repeats it, and emits it."""
    await queries.record_outcome(
        uow.connection,
        application_id=outcome.application_id,
        outcome_topic=outcome.TOPIC,
        outcome_data=outcome.model_dump(mode="json"),
    )
    uow.emit(outcome, correlationid=correlationid, causationid=cause)
