"""One frozen pydantic model per topic (v1 and the v1.1 additions); each declares its topic once,
in `TOPIC`.

Inbound payloads forbid unknown fields (they are likely typos of PII fields);
outbound payloads ignore them, so Homeward may add fields within v1.
"""

from datetime import date
from typing import Annotated, ClassVar, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from contracts.values import (
    AirlineCode,
    AirportCode,
    CountryCode,
    CurrencyCode,
    EmailAddress,
    Money,
    PhoneNumber,
    Text,
    Timestamp,
    UsState,
)


class Inbound(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    TOPIC: ClassVar[str]


class Outbound(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    TOPIC: ClassVar[str]


# registration.submitted.v1 -------------------------------------------------

Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]
DocumentNumber = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 \-]{4,20}$")]


class Person(Inbound):
    given_name: Name
    family_name: Name
    date_of_birth: date
    nationality: CountryCode


class IdentityDocument(Inbound):
    type: Literal["passport", "national_id", "consular_id"]
    number: DocumentNumber
    issuing_country: CountryCode
    expires_on: date


class Contact(Inbound):
    phone: PhoneNumber | None
    email: EmailAddress | None

    @model_validator(mode="after")
    def _one_way_to_reach(self) -> "Contact":
        if self.phone is None and self.email is None:
            raise ValueError("at least one of phone or email is required")
        return self


class CurrentLocation(Inbound):
    us_state: UsState
    city: Text
    nearest_airport: AirportCode


class Destination(Inbound):
    country: CountryCode
    city: Text
    airport: AirportCode


class MobileMoneyPayout(Inbound):
    method: Literal["mobile_money"]
    msisdn: PhoneNumber
    provider: Text


class BankAccountPayout(Inbound):
    method: Literal["bank_account"]
    bank_code: Text
    account_number: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    account_name: Text


Payout = Annotated[MobileMoneyPayout | BankAccountPayout, Field(discriminator="method")]


class Consent(Inbound):
    # A bool, not Literal[True]: consent that is false is a `consent_missing`
    # eligibility outcome, not a malformed payload.
    data_processing: bool
    version: Text


class RegistrationSubmitted(Inbound):
    TOPIC: ClassVar[str] = "registration.submitted.v1"

    application_id: UUID
    submitted_at: Timestamp
    person: Person
    identity_document: IdentityDocument
    contact: Contact
    current_location: CurrentLocation
    destination: Destination
    payout: Payout
    consent: Consent


# registration outcomes -------------------------------------------------------

RejectionCode = Literal[
    "invalid_payload",
    "consent_missing",
    "ineligible_age",
    "ineligible_destination",
    "document_expired",
    "duplicate_registration",
]


class RegistrationAccepted(Outbound):
    TOPIC: ClassVar[str] = "registration.accepted.v1"

    case_id: UUID
    application_id: UUID
    identity_key: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    origin_airport: AirportCode
    destination_country: CountryCode
    destination_airport: AirportCode
    sealed: str
    accepted_at: Timestamp


class RejectionReason(Outbound):
    code: RejectionCode
    field: str | None
    message: str


class RegistrationRejected(Outbound):
    TOPIC: ClassVar[str] = "registration.rejected.v1"

    application_id: UUID
    reasons: Annotated[tuple[RejectionReason, ...], Field(min_length=1)]
    duplicate_of_case_id: UUID | None
    rejected_at: Timestamp


# travel ----------------------------------------------------------------------


class TravelBooked(Outbound):
    TOPIC: ClassVar[str] = "travel.booked.v1"

    case_id: UUID
    booking_id: str
    carrier: AirlineCode
    flight_number: str
    origin_airport: AirportCode
    destination_airport: AirportCode
    scheduled_departure: Timestamp
    scheduled_arrival: Timestamp
    booked_at: Timestamp


class TravelBookingFailed(Outbound):
    TOPIC: ClassVar[str] = "travel.booking_failed.v1"

    case_id: UUID
    reason: str
    attempts: int
    failed_at: Timestamp


# arrival.evidence.v1 (inbound; `source` decides the shape) -------------------

EVIDENCE_TOPIC = "arrival.evidence.v1"


class _Evidence(Inbound):
    TOPIC: ClassVar[str] = EVIDENCE_TOPIC

    evidence_id: UUID
    case_id: UUID
    observed_at: Timestamp
    country: CountryCode


class AppCheckIn(_Evidence):
    source: Literal["participant_app"]
    identity_match_score: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    latitude: Annotated[float, Field(ge=-90.0, le=90.0, allow_inf_nan=False)]
    longitude: Annotated[float, Field(ge=-180.0, le=180.0, allow_inf_nan=False)]


class CarrierRecord(_Evidence):
    source: Literal["carrier"]
    flight_number: Annotated[str, StringConstraints(min_length=3, max_length=10)]
    status: Literal["boarded", "landed"]


class PartnerOfficeRecord(_Evidence):
    source: Literal["partner_office"]
    office_code: Text
    officer_id: Text
    document_checked: bool


ArrivalEvidence = Annotated[AppCheckIn | CarrierRecord | PartnerOfficeRecord, Field(discriminator="source")]


# arrival outcomes --------------------------------------------------------------


class ArrivalVerified(Outbound):
    TOPIC: ClassVar[str] = "arrival.verified.v1"

    case_id: UUID
    evidence_ids: Annotated[tuple[UUID, ...], Field(min_length=1)]
    rule: Literal["partner_office", "carrier_and_app"]
    verified_at: Timestamp


class ArrivalRejected(Outbound):
    TOPIC: ClassVar[str] = "arrival.rejected.v1"

    case_id: UUID
    reason: Literal["verification_window_expired"]
    rejected_at: Timestamp


CompactJws = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")]
"""A JWS in compact serialization: three base64url parts joined by dots."""


class ArrivalAttested(Outbound):
    """Contract v1.1: the signed record of a program departure, one per verified case. The
    `attestation` is a compact JWS (EdDSA, Ed25519) whose payload is `contracts.attestation.Claims`."""

    TOPIC: ClassVar[str] = "arrival.attested.v1"

    case_id: UUID
    attestation: CompactJws
    key_id: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    issued_at: Timestamp


# stipend -----------------------------------------------------------------------


HeldReason = Literal["budget_exhausted", "instrument_shared", "program_paused"]
"""Why a stipend waits (contract v1.1 adds the two review holds). The field stays text in the
schema: a consumer meets the reasons it knows and must tolerate new ones."""


class StipendHeld(Outbound):
    TOPIC: ClassVar[str] = "stipend.held.v1"

    case_id: UUID
    payment_id: UUID
    reason: str
    held_at: Timestamp


class StipendDisbursed(Outbound):
    TOPIC: ClassVar[str] = "stipend.disbursed.v1"

    case_id: UUID
    payment_id: UUID
    amount: Money
    currency: CurrencyCode
    method: Literal["mobile_money", "bank_account"]
    provider_ref: str
    disbursed_at: Timestamp


class StipendFailed(Outbound):
    TOPIC: ClassVar[str] = "stipend.failed.v1"

    case_id: UUID
    payment_id: UUID
    reason: str
    failed_at: Timestamp


# withdrawal (contract v1.1) --------------------------------------------------------


class WithdrawalRequested(Inbound):
    """The participant asks to leave the program; resending the same `request_id` is a safe retry."""

    TOPIC: ClassVar[str] = "case.withdrawal_requested.v1"

    request_id: UUID
    case_id: UUID
    requested_at: Timestamp
    channel: Literal["participant_app", "partner_office"]
    reason: Literal["changed_mind", "other"]


class CaseWithdrawn(Outbound):
    TOPIC: ClassVar[str] = "case.withdrawn.v1"

    case_id: UUID
    request_id: UUID
    booking_cancelled: bool
    """True when the case had a booking, which travel cancels at the provider; false when it had none."""
    withdrawn_at: Timestamp


WithdrawalRefusal = Literal["already_departed", "already_paid", "unknown_case"]


class WithdrawalRefused(Outbound):
    TOPIC: ClassVar[str] = "case.withdrawal_refused.v1"

    case_id: UUID
    request_id: UUID
    reason: WithdrawalRefusal
    refused_at: Timestamp
