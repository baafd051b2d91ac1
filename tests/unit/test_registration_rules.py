"""Registration rules: who is eligible, when two documents are the same person, and what is sealed."""

import os
from uuid import uuid4

import pytest
from cryptography.exceptions import InvalidTag

from contracts.events import IdentityDocument
from services.registration.domain import eligibility_refusals, normalized_document, sealed_contents
from services.runtime import casekeys, crypto
from tests.unit.factories import application

NAME_CANARY = "Zebulon"


def _codes(**overrides: object) -> list[str]:
    return [refusal.code for refusal in eligibility_refusals(application(**overrides))]


def _document(**overrides: str) -> IdentityDocument:
    fields = {"type": "passport", "number": "F 123-4567", "issuing_country": "HN", "expires_on": "2030-06-30"}
    return IdentityDocument.model_validate({**fields, **overrides})


# Eligibility (submitted on 2026-11-22) ------------------------------------------------------------


def test_eligible_application_has_no_refusals() -> None:
    assert eligibility_refusals(application()) == []


def test_consent_not_given_is_consent_missing() -> None:
    [refusal] = eligibility_refusals(application(consent__data_processing=False))

    assert (refusal.code, refusal.field) == ("consent_missing", "consent.data_processing")
    assert refusal.message


@pytest.mark.parametrize(
    ("date_of_birth", "codes"),
    [
        ("2008-11-23", ["ineligible_age"]),  # turns 18 the day after submitting
        ("2008-11-22", []),  # 18th birthday on the day of submission
        ("2008-11-21", []),
        ("2015-01-01", ["ineligible_age"]),
    ],
)
def test_applicant_must_be_18_on_the_day_of_submission(date_of_birth: str, codes: list[str]) -> None:
    assert _codes(person__date_of_birth=date_of_birth) == codes


def test_age_refusal_names_the_birth_date_field() -> None:
    [refusal] = eligibility_refusals(application(person__date_of_birth="2010-05-05"))

    assert (refusal.code, refusal.field) == ("ineligible_age", "person.date_of_birth")


@pytest.mark.parametrize(
    ("submitted_at", "codes"),
    [("2026-02-28T12:00:00Z", ["ineligible_age"]), ("2026-03-01T12:00:00Z", [])],
)
def test_leap_day_birthday_counts_from_the_first_of_march(submitted_at: str, codes: list[str]) -> None:
    assert _codes(person__date_of_birth="2008-02-29", submitted_at=submitted_at) == codes


def test_destination_us_is_ineligible_destination() -> None:
    [refusal] = eligibility_refusals(application(destination__country="US"))

    assert (refusal.code, refusal.field) == ("ineligible_destination", "destination.country")


@pytest.mark.parametrize(
    ("expires_on", "codes"),
    [
        ("2026-11-21", ["document_expired"]),  # the day before submitting
        ("2026-11-22", []),  # expires the day it is submitted: still valid that day
        ("2026-11-23", []),
    ],
)
def test_document_expired_before_the_submission_day_is_refused(expires_on: str, codes: list[str]) -> None:
    assert _codes(identity_document__expires_on=expires_on) == codes


def test_every_broken_rule_is_listed_in_contract_order() -> None:
    refusals = eligibility_refusals(
        application(
            consent__data_processing=False,
            person__date_of_birth="2012-01-01",
            destination__country="US",
            identity_document__expires_on="2020-01-01",
        )
    )

    assert [refusal.code for refusal in refusals] == [
        "consent_missing",
        "ineligible_age",
        "ineligible_destination",
        "document_expired",
    ]
    assert all(refusal.field for refusal in refusals)


# Document identity ---------------------------------------------------------------------------------


def test_document_number_is_compared_without_case_spaces_or_hyphens() -> None:
    assert normalized_document(_document(number="F 123-4567")) == normalized_document(_document(number="f1234567"))


@pytest.mark.parametrize("other", [{"issuing_country": "GT"}, {"type": "national_id"}, {"number": "F1234568"}])
def test_document_of_another_country_type_or_number_is_another_identity(other: dict[str, str]) -> None:
    assert normalized_document(_document()) != normalized_document(_document(**other))


def test_identity_key_is_stable_hex_and_depends_on_the_secret() -> None:
    secret, other_secret = os.urandom(32), os.urandom(32)
    same_person = normalized_document(_document(number="f-123 4567"))

    key = crypto.identity_key(secret, normalized_document(_document()))

    assert len(key) == 64 and int(key, 16) >= 0
    assert crypto.identity_key(secret, same_person) == key
    assert crypto.identity_key(other_secret, same_person) != key
    assert crypto.identity_key(secret, normalized_document(_document(issuing_country="GT"))) != key
    assert "1234567" not in key


# Sealed personal data ----------------------------------------------------------------------------------


def test_sealed_contents_give_travel_the_traveler_and_disbursement_the_payout_and_neither_the_other() -> None:
    contents = sealed_contents(application(person__given_name=NAME_CANARY))
    traveler, payout = contents[casekeys.TRAVELER], contents[casekeys.PAYOUT]

    assert (traveler["given_name"], traveler["family_name"]) == (NAME_CANARY, "Reyes")
    assert traveler["date_of_birth"] == "1991-03-14"
    assert traveler["document"]["type"] == "passport"
    assert "payout" not in traveler
    assert (payout["given_name"], payout["family_name"]) == (NAME_CANARY, "Reyes")
    assert payout["payout"] == {"method": "mobile_money", "msisdn": "+50499887766", "provider": "tigo"}
    assert "document" not in payout and "date_of_birth" not in payout


def test_seal_round_trips_and_hides_the_plaintext() -> None:
    readers = {purpose: crypto.Keyring(os.urandom(32)) for purpose in (casekeys.TRAVELER, casekeys.PAYOUT)}
    case_id = str(uuid4())
    contents = sealed_contents(application(person__given_name=NAME_CANARY))

    sealed = casekeys.seal_case(readers, contents, case_id=case_id)

    assert NAME_CANARY not in sealed
    assert "+50499887766" not in sealed
    for purpose, keyring in readers.items():
        part = casekeys.take(sealed, purpose)
        assert casekeys.open_taken(keyring, part, case_id=case_id, purpose=purpose) == contents[purpose]


def test_sealing_twice_gives_different_blobs() -> None:
    key, case_id = os.urandom(32), str(uuid4())

    assert crypto.seal(key, {"given_name": NAME_CANARY}, bound_to=case_id) != crypto.seal(
        key, {"given_name": NAME_CANARY}, bound_to=case_id
    )


def test_sealed_blob_does_not_open_for_another_case() -> None:
    key = os.urandom(32)
    sealed = crypto.seal(key, {"given_name": NAME_CANARY}, bound_to=str(uuid4()))

    with pytest.raises(InvalidTag):
        crypto.unseal(key, sealed, bound_to=str(uuid4()))


def test_sealed_blob_does_not_open_with_another_key() -> None:
    case_id = str(uuid4())
    sealed = crypto.seal(os.urandom(32), {"given_name": NAME_CANARY}, bound_to=case_id)

    with pytest.raises(crypto.UNSEAL_ERRORS):  # no key of its id
        crypto.unseal(os.urandom(32), sealed, bound_to=case_id)


def test_tampered_sealed_blob_does_not_open() -> None:
    key, case_id = os.urandom(32), str(uuid4())
    sealed = crypto.seal(key, {"given_name": NAME_CANARY}, bound_to=case_id)
    flipped = "A" if sealed[-5] != "A" else "B"
    tampered = sealed[:-5] + flipped + sealed[-4:]

    with pytest.raises(InvalidTag):
        crypto.unseal(key, tampered, bound_to=case_id)


def test_sealed_blob_of_an_unknown_version_is_refused() -> None:
    key, case_id = os.urandom(32), str(uuid4())
    sealed = crypto.seal(key, {"given_name": NAME_CANARY}, bound_to=case_id)

    with pytest.raises(ValueError, match="version"):
        crypto.unseal(key, "v9" + sealed.removeprefix("v1"), bound_to=case_id)
