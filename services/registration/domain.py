"""Registration rules as pure functions: eligibility, document normalisation, what is sealed."""

from dataclasses import dataclass
from datetime import date
from typing import Any

from contracts.events import IdentityDocument, RegistrationSubmitted
from services.runtime.casekeys import PAYOUT, TRAVELER

ADULT_AGE_YEARS = 18
HOME_COUNTRY_EXCLUDED = "US"


@dataclass(frozen=True)
class Refusal:
    """One reason an application is refused; `code` is the contract's rejection code."""

    code: str
    field: str | None
    message: str


def age_on(birth: date, day: date) -> int:
    had_birthday = (day.month, day.day) >= (birth.month, birth.day)
    return day.year - birth.year - (0 if had_birthday else 1)


def eligibility_refusals(application: RegistrationSubmitted) -> list[Refusal]:
    """Every eligibility rule the application breaks, in the contract's order."""
    submitted_on = application.submitted_at.date()
    refusals = []
    if application.consent.data_processing is not True:
        refusals.append(Refusal("consent_missing", "consent.data_processing", "consent to data processing is required"))
    if age_on(application.person.date_of_birth, submitted_on) < ADULT_AGE_YEARS:
        refusals.append(
            Refusal("ineligible_age", "person.date_of_birth", f"applicants must be {ADULT_AGE_YEARS} or older")
        )
    if application.destination.country == HOME_COUNTRY_EXCLUDED:
        refusals.append(
            Refusal("ineligible_destination", "destination.country", "the destination must be outside the US")
        )
    if application.identity_document.expires_on < submitted_on:
        refusals.append(
            Refusal("document_expired", "identity_document.expires_on", "the identity document has expired")
        )
    return refusals


def normalized_document(document: IdentityDocument) -> str:
    """Type, issuing country and number, upper-cased, with spaces and hyphens removed."""
    number = document.number.upper().replace(" ", "").replace("-", "")
    return f"{document.type}|{document.issuing_country}|{number}"


def sealed_contents(application: RegistrationSubmitted) -> dict[str, dict[str, Any]]:
    """What each reader needs of the person, by purpose: travel the traveler (name, birth date,
    document), disbursement the payout (name, instrument); neither gets the other's."""
    person = application.person
    name = {"given_name": person.given_name, "family_name": person.family_name}
    return {
        TRAVELER: {
            **name,
            "date_of_birth": person.date_of_birth.isoformat(),
            "document": application.identity_document.model_dump(mode="json"),
        },
        PAYOUT: {**name, "payout": application.payout.model_dump(mode="json")},
    }
