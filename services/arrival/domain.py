"""The v1 arrival verification policy, as pure functions over facts and evidence."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Literal
from uuid import UUID

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from contracts import signing

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


# Why a piece of evidence did not count (`homeward case show`): the policy's words for it.
WRONG_COUNTRY = "wrong_country"
BEFORE_DEPARTURE = "before_departure"
AFTER_WINDOW = "after_window"
FROM_THE_FUTURE = "from_the_future"
OFFICE_DOCUMENT_UNCHECKED = "document_not_checked"
CARRIER_NOT_LANDED = "not_landed"
CARRIER_OTHER_FLIGHT = "other_flight"
APP_SCORE_TOO_LOW = "score_too_low"


def _outside(evidence: Evidence, case: CaseFacts, window: timedelta) -> str | None:
    """Why evidence is outside what may count at all (None: it may count)."""
    if evidence.country != case.destination_country:
        return WRONG_COUNTRY
    if evidence.observed_at < case.scheduled_departure:
        return BEFORE_DEPARTURE
    if evidence.observed_at > case.scheduled_arrival + window:
        return AFTER_WINDOW
    if evidence.observed_at > evidence.received_at + FUTURE_TOLERANCE:
        return FROM_THE_FUTURE
    return None


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


def not_counted(evidence: Evidence, case: CaseFacts, window: timedelta) -> str | None:
    """Why a piece of evidence cannot serve the policy (`counts`, then what its rule asks of its
    source), or None where it can. For people reading a case; `verify` decides."""
    if (outside := _outside(evidence, case, window)) is not None:
        return outside
    if evidence.source == "partner_office" and evidence.document_checked is not True:
        return OFFICE_DOCUMENT_UNCHECKED
    if evidence.source == "carrier" and evidence.status != "landed":
        return CARRIER_NOT_LANDED
    if evidence.source == "carrier" and evidence.flight_number != case.flight_number:
        return CARRIER_OTHER_FLIGHT
    if evidence.source == "participant_app" and (evidence.identity_match_score or 0.0) < APP_MATCH_SCORE_MIN:
        return APP_SCORE_TOO_LOW
    return None


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


# Signed evidence (contract v1.1) ---------------------------------------------------------------

# Why a piece of evidence did not authenticate: the first word of its dead letter's detail.
UNSIGNED = "missing_signature"
MALFORMED_SIGNATURE = "malformed_signature"
UNKNOWN_SIGNER = "unknown_signer"
REVOKED_SIGNER = "revoked_signer"
WRONG_SOURCE = "wrong_source"
OTHER_OFFICE = "office_mismatch"
BAD_SIGNATURE = "bad_signature"


@dataclass(frozen=True)
class Signer:
    """A registered evidence signer: whose public key vouches for which source (and office)."""

    signer_id: str
    source: str
    public_key: bytes
    office_code: str | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class Signed:
    """What the check reads of one evidence record: its headers' claims and its exact bytes."""

    signer_id: str | None
    signature: bytes | None
    value: bytes
    source: str
    office_code: str | None
    received_at: datetime


def refusal(evidence: Signed, signer: Signer | None) -> str | None:
    """None when the evidence may count; otherwise why not. The cheap checks come first, the
    signature last, so that unsigned floods cost no curve arithmetic."""
    if evidence.signer_id is None or evidence.signature is None:
        return UNSIGNED
    if len(evidence.signature) != signing.SIGNATURE_BYTES:
        return MALFORMED_SIGNATURE
    if signer is None:
        return UNKNOWN_SIGNER
    # Revoked at T: what it sent before T still counts, nothing received at T or later does.
    if signer.revoked_at is not None and evidence.received_at >= signer.revoked_at:
        return REVOKED_SIGNER
    if signer.source != evidence.source:
        return WRONG_SOURCE
    if signer.office_code is not None and signer.office_code != evidence.office_code:
        return OTHER_OFFICE
    if not verifies(signer.public_key, evidence.signature, evidence.value):
        return BAD_SIGNATURE
    return None


SIGNER_KEYS_CACHED = 1024
"""Parsed signer keys kept (one per registered signer in use)."""


@lru_cache(maxsize=SIGNER_KEYS_CACHED)
def _verify_key(public_key: bytes) -> VerifyKey:
    return VerifyKey(public_key)


def verifies(public_key: bytes, signature: bytes, value: bytes) -> bool:
    """`contracts.signing.verifies`, by libsodium (PyNaCl): on the hot path, where every piece of
    evidence is checked, it verifies 1.6 times faster here than OpenSSL (62 µs against 100)."""
    try:
        _verify_key(public_key).verify(value, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


# Withdrawal (contract v1.1): a request's answer, from what arrival knows of its case.
WITHDRAWN = "withdrawn"
ALREADY_DEPARTED = "already_departed"
ALREADY_PAID = "already_paid"
UNKNOWN_CASE = "unknown_case"


def departed(scheduled_departure: datetime | None, received_at: datetime) -> bool:
    """A request received at or after the booked flight's departure is too late; with no booking
    known, the case has not departed."""
    return scheduled_departure is not None and received_at >= scheduled_departure


def withdrawal_decision(outcome: str | None, *, paid: bool, departed: bool) -> str:
    """What a request for a known case gets. A case with an outcome keeps it: withdrawn again for
    a withdrawn one; refused for a verified one (`already_paid` once its stipend was paid) and for
    one rejected at arrival (its flight had left). An undecided case is withdrawn unless its
    flight had left when the request came."""
    if outcome == WITHDRAWN:
        return WITHDRAWN
    if outcome == "verified":
        return ALREADY_PAID if paid else ALREADY_DEPARTED
    if outcome is not None or departed:
        return ALREADY_DEPARTED
    return WITHDRAWN
