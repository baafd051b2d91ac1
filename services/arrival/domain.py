"""The v1 arrival verification policy, as pure functions over facts and evidence."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

FUTURE_TOLERANCE = timedelta(minutes=5)
APP_MATCH_SCORE_MIN = 0.80

Rule = Literal["partner_office", "carrier_and_app"]


@dataclass(frozen=True)
class CaseFacts:
    destination_country: str
    flight_number: str
    scheduled_departure: datetime
    scheduled_arrival: datetime


@dataclass(frozen=True)
class Evidence:
    evidence_id: UUID
    source: str
    observed_at: datetime
    received_at: datetime
    country: str
    identity_match_score: float | None = None
    flight_number: str | None = None
    status: str | None = None
    document_checked: bool | None = None


@dataclass(frozen=True)
class Verdict:
    rule: Rule
    evidence_ids: tuple[UUID, ...]


def counts(evidence: Evidence, case: CaseFacts, window: timedelta) -> bool:
    """Evidence counts if it is from the destination, inside the window, and not from the future.

    "The future" is judged against when Homeward received the evidence, so the
    verdict does not depend on when it happens to be evaluated.
    """
    return (
        evidence.country == case.destination_country
        and case.scheduled_departure <= evidence.observed_at <= case.scheduled_arrival + window
        and evidence.observed_at <= evidence.received_at + FUTURE_TOLERANCE
    )


def _earliest(candidates: Iterable[Evidence]) -> Evidence | None:
    return min(candidates, key=lambda e: (e.observed_at, str(e.evidence_id)), default=None)


def verify(case: CaseFacts, evidence: Iterable[Evidence], window: timedelta) -> Verdict | None:
    """Verified on a checked partner-office record, or a landed carrier record for the booked
    flight together with an app check-in scoring at least 0.80; otherwise not (yet)."""
    counted = [e for e in evidence if counts(e, case, window)]
    office = _earliest(e for e in counted if e.source == "partner_office" and e.document_checked is True)
    if office is not None:
        return Verdict("partner_office", (office.evidence_id,))
    landed = _earliest(
        e for e in counted if e.source == "carrier" and e.status == "landed" and e.flight_number == case.flight_number
    )
    app = _earliest(
        e for e in counted if e.source == "participant_app" and (e.identity_match_score or 0.0) >= APP_MATCH_SCORE_MIN
    )
    if landed is not None and app is not None:
        return Verdict("carrier_and_app", (landed.evidence_id, app.evidence_id))
    return None
