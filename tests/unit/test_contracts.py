"""The v1 contract in code agrees with CONTRACT.md: its examples, its exported schemas and its value rules."""

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

from contracts.events import (
    AppCheckIn,
    CarrierRecord,
    PartnerOfficeRecord,
    RegistrationAccepted,
    RegistrationSubmitted,
    StipendDisbursed,
)
from contracts.export import SCHEMA_DIR, render
from contracts.registry import INBOUND_TOPICS, PAYLOAD_TYPES, envelope_adapter
from tests.unit.factories import envelope, evidence_data, submission

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "contract" / "examples"
PLACEHOLDER_CASE_ID = "CASE-ID-FROM-registration.accepted"
PLACEHOLDER_FLIGHT = "FLIGHT-FROM-travel.booked"
EXPORT_HINT = "run `homeward contracts export` and commit contracts/schemas/"

SUBMITTED = "registration.submitted.v1"
EVIDENCE = "arrival.evidence.v1"
DISBURSED = "stipend.disbursed.v1"


def _example_files() -> list[Any]:
    if not EXAMPLES.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"contract examples not found at {EXAMPLES}"))]
    return [pytest.param(path, id=path.name) for path in sorted(EXAMPLES.glob("*.json"))]


def _load_example(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    text = text.replace(PLACEHOLDER_CASE_ID, str(uuid4())).replace(PLACEHOLDER_FLIGHT, "XH123")
    document: dict[str, Any] = json.loads(text)
    return document


def _topic_of_example(path: Path) -> str:
    match = re.match(r"^(.+?\.v\d+)\.", path.name)
    assert match, f"example {path.name} is not named <topic>.<variant>.json"
    return match.group(1)


def _validate(topic: str, document: dict[str, Any]) -> Any:
    return envelope_adapter(topic).validate_python(document)


def _refused_at(topic: str, document: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Validates a document that must be refused and returns the locations of its errors."""
    with pytest.raises(ValidationError) as refused:
        _validate(topic, document)
    return [tuple(error["loc"]) for error in refused.value.errors()]


def _disbursed(amount: Any) -> dict[str, Any]:
    return {
        "case_id": str(uuid4()),
        "payment_id": str(uuid4()),
        "amount": amount,
        "currency": "USD",
        "method": "mobile_money",
        "provider_ref": "sandbox-1",
        "disbursed_at": "2026-11-25T08:00:00Z",
    }


def _accepted(**extra: Any) -> dict[str, Any]:
    return {
        "case_id": str(uuid4()),
        "application_id": str(uuid4()),
        "identity_key": "a" * 64,
        "origin_airport": "IAH",
        "destination_country": "HN",
        "destination_airport": "TGU",
        "sealed": "v1.opaque",
        "accepted_at": "2026-11-22T10:00:02Z",
        **extra,
    }


# The published examples ------------------------------------------------------------------


@pytest.mark.parametrize("path", _example_files())
def test_every_contract_example_validates_against_its_topic(path: Path) -> None:
    topic = _topic_of_example(path)
    document = _load_example(path)

    parsed = _validate(topic, document)

    assert parsed.type == topic
    assert str(parsed.id) == document["id"]


def test_examples_cover_every_evidence_source_and_payout_method() -> None:
    if not EXAMPLES.is_dir():
        pytest.skip(f"contract examples not found at {EXAMPLES}")
    payloads = [_validate(_topic_of_example(path), _load_example(path)).data for path in EXAMPLES.glob("*.json")]

    assert {type(payload) for payload in payloads if not isinstance(payload, RegistrationSubmitted)} == {
        AppCheckIn,
        CarrierRecord,
        PartnerOfficeRecord,
    }
    assert {p.payout.method for p in payloads if isinstance(p, RegistrationSubmitted)} == {
        "mobile_money",
        "bank_account",
    }


# The exported JSON Schemas ---------------------------------------------------------------


@pytest.mark.parametrize("topic", list(PAYLOAD_TYPES))
def test_checked_in_schema_matches_the_models(topic: str) -> None:
    path = SCHEMA_DIR / f"{topic}.json"

    assert path.is_file(), f"{path.name} is missing: {EXPORT_HINT}"
    assert path.read_text(encoding="utf-8") == render(topic), f"{path.name} is stale: {EXPORT_HINT}"


def test_no_schema_file_without_a_topic() -> None:
    checked_in = {path.name for path in SCHEMA_DIR.glob("*.json")}
    expected = {f"{topic}.json" for topic in PAYLOAD_TYPES}

    assert checked_in - expected == set(), f"schemas for unknown topics: {EXPORT_HINT}"
    assert expected - checked_in == set(), f"schemas missing: {EXPORT_HINT}"


def test_exported_schema_pins_the_type_and_money_as_a_string() -> None:
    schema = json.loads(render(DISBURSED))

    assert schema["properties"]["type"]["const"] == DISBURSED
    amount = schema["$defs"]["StipendDisbursed"]["properties"]["amount"]
    assert amount["type"] == "string"
    assert re.fullmatch(amount["pattern"], "1000.00")
    assert not re.fullmatch(amount["pattern"], "1000.0")


# Unknown fields -------------------------------------------------------------------------------


def test_inbound_topics_are_the_three_the_contract_names() -> None:
    assert INBOUND_TOPICS == {SUBMITTED, EVIDENCE, "case.withdrawal_requested.v1"}


def test_unknown_field_in_a_nested_inbound_object_is_refused() -> None:
    document = envelope(SUBMITTED, submission(person__passport_no="X1234567"))

    assert _refused_at(SUBMITTED, document) == [("data", "person", "passport_no")]


def test_unknown_top_level_inbound_data_field_is_refused() -> None:
    document = envelope(SUBMITTED, submission(passport_no="X1234567"))

    assert _refused_at(SUBMITTED, document) == [("data", "passport_no")]


def test_unknown_evidence_field_is_refused() -> None:
    document = envelope(EVIDENCE, evidence_data("carrier", seat="12A"))

    assert ("data", "carrier", "seat") in _refused_at(EVIDENCE, document)


def test_unknown_outbound_data_field_is_ignored() -> None:
    document = envelope("registration.accepted.v1", _accepted(added_in_v1_1="later"))

    parsed = _validate("registration.accepted.v1", document)

    assert isinstance(parsed.data, RegistrationAccepted)
    assert "added_in_v1_1" not in parsed.data.model_dump()


def test_unknown_envelope_field_is_ignored() -> None:
    document = envelope(SUBMITTED, submission(), traceparent="00-abc-def-01", partitionkey="x")

    parsed = _validate(SUBMITTED, document)

    assert isinstance(parsed.data, RegistrationSubmitted)
    assert "traceparent" not in parsed.model_dump()


@pytest.mark.parametrize("missing", ["specversion", "id", "type", "source", "time", "subject", "correlationid", "data"])
def test_envelope_without_a_required_field_is_refused(missing: str) -> None:
    document = envelope(SUBMITTED, submission(), **{missing: ...})

    assert (missing,) in _refused_at(SUBMITTED, document)


def test_envelope_causationid_is_optional() -> None:
    parsed = _validate(SUBMITTED, envelope(SUBMITTED, submission()))

    assert parsed.causationid is None


# Money -----------------------------------------------------------------------------------------


def test_money_serializes_as_a_two_decimal_string() -> None:
    payload = StipendDisbursed.model_validate(_disbursed(Decimal("1000.00")))

    assert json.loads(payload.model_dump_json())["amount"] == "1000.00"
    assert payload.amount == Decimal("1000.00")


def test_money_string_with_two_decimals_is_accepted() -> None:
    parsed = _validate(DISBURSED, envelope(DISBURSED, _disbursed("1000.00")))

    assert parsed.data.amount == Decimal("1000.00")


@pytest.mark.parametrize("amount", ["1000.000", "1000.0", "1000", 1000, 1000.5, 1000.0])
def test_money_without_exactly_two_decimals_is_refused(amount: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        StipendDisbursed.model_validate(_disbursed(amount))

    assert [error["loc"] for error in refused.value.errors()] == [("amount",)]


def test_money_as_a_float_is_refused_even_with_two_decimals() -> None:
    with pytest.raises(ValidationError):
        StipendDisbursed.model_validate_json(json.dumps(_disbursed(1000.25)))


# Contact ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "email"),
    [("+17135550142", None), (None, "ana@example.org"), ("+17135550142", "ana@example.org")],
)
def test_contact_with_a_phone_or_an_email_is_accepted(phone: str | None, email: str | None) -> None:
    parsed = _validate(SUBMITTED, envelope(SUBMITTED, submission(contact={"phone": phone, "email": email})))

    assert (parsed.data.contact.phone, parsed.data.contact.email) == (phone, email)


def test_contact_without_phone_and_email_is_refused() -> None:
    document = envelope(SUBMITTED, submission(contact={"phone": None, "email": None}))

    assert _refused_at(SUBMITTED, document) == [("data", "contact")]


@pytest.mark.parametrize(
    "contact",
    [
        {"phone": "7135550142", "email": None},
        {"phone": "+0135550142", "email": None},
        {"phone": None, "email": "not-an-address"},
    ],
)
def test_malformed_phone_or_email_is_refused(contact: dict[str, Any]) -> None:
    document = envelope(SUBMITTED, submission(contact=contact))

    assert _refused_at(SUBMITTED, document)[0][:3] == ("data", "contact", next(k for k, v in contact.items() if v))


# Evidence shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "model"),
    [("participant_app", AppCheckIn), ("carrier", CarrierRecord), ("partner_office", PartnerOfficeRecord)],
)
def test_evidence_source_decides_the_shape(source: str, model: type) -> None:
    parsed = _validate(EVIDENCE, envelope(EVIDENCE, evidence_data(source)))

    assert type(parsed.data) is model
    assert parsed.data.source == source


@pytest.mark.parametrize(
    ("source", "missing"),
    [
        ("participant_app", "identity_match_score"),
        ("carrier", "flight_number"),
        ("carrier", "status"),
        ("partner_office", "document_checked"),
    ],
)
def test_evidence_without_a_field_its_source_requires_is_refused(source: str, missing: str) -> None:
    document = envelope(EVIDENCE, evidence_data(source, **{missing: ...}))

    assert _refused_at(EVIDENCE, document) == [("data", source, missing)]


def test_evidence_with_another_sources_fields_is_refused() -> None:
    data = evidence_data("carrier", identity_match_score=0.95)

    assert ("data", "carrier", "identity_match_score") in _refused_at(EVIDENCE, envelope(EVIDENCE, data))


@pytest.mark.parametrize(("field", "value"), [("source", "drone"), ("status", "departed")])
def test_evidence_with_an_unknown_source_or_status_is_refused(field: str, value: str) -> None:
    assert _refused_at(EVIDENCE, envelope(EVIDENCE, evidence_data("carrier", **{field: value})))


@pytest.mark.parametrize("score", [0.0, 0.8, 1.0])
def test_identity_match_score_inside_zero_to_one_is_accepted(score: float) -> None:
    parsed = _validate(EVIDENCE, envelope(EVIDENCE, evidence_data("participant_app", identity_match_score=score)))

    assert parsed.data.identity_match_score == score


@pytest.mark.parametrize("score", [-0.01, 1.01, float("nan"), float("inf")])
def test_identity_match_score_outside_zero_to_one_is_refused(score: float) -> None:
    document = envelope(EVIDENCE, evidence_data("participant_app", identity_match_score=score))

    assert _refused_at(EVIDENCE, document) == [("data", "participant_app", "identity_match_score")]


# Codes and timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "location"),
    [
        ({"person__nationality": "hn"}, ("data", "person", "nationality")),
        ({"destination__country": "hn"}, ("data", "destination", "country")),
        ({"identity_document__issuing_country": "Hn"}, ("data", "identity_document", "issuing_country")),
        ({"destination__airport": "tgu"}, ("data", "destination", "airport")),
        ({"current_location__us_state": "ZZ"}, ("data", "current_location", "us_state")),
    ],
)
def test_lower_case_or_unknown_codes_are_refused(override: dict[str, str], location: tuple[str, ...]) -> None:
    assert _refused_at(SUBMITTED, envelope(SUBMITTED, submission(**override))) == [location]


def test_lower_case_evidence_country_is_refused() -> None:
    document = envelope(EVIDENCE, evidence_data("partner_office", country="hn"))

    assert _refused_at(EVIDENCE, document) == [("data", "partner_office", "country")]


def test_timestamp_without_offset_is_refused_in_payload_and_envelope() -> None:
    in_payload = envelope(SUBMITTED, submission(submitted_at="2026-11-22T10:00:00"))
    in_envelope = envelope(SUBMITTED, submission(), time="2026-11-22T10:00:00")

    assert _refused_at(SUBMITTED, in_payload) == [("data", "submitted_at")]
    assert _refused_at(SUBMITTED, in_envelope) == [("time",)]


@pytest.mark.parametrize("moment", ["2026-11-22T10:00:00Z", "2026-11-22T04:00:00-06:00", "2026-11-22T10:00:00.5+00:00"])
def test_timestamp_with_offset_is_accepted(moment: str) -> None:
    parsed = _validate(SUBMITTED, envelope(SUBMITTED, submission(submitted_at=moment)))

    assert parsed.data.submitted_at.utcoffset() is not None


# Frozen models ---------------------------------------------------------------------------------------


def test_payload_envelope_and_nested_models_are_frozen() -> None:
    parsed = _validate(SUBMITTED, envelope(SUBMITTED, submission()))

    with pytest.raises(ValidationError, match="frozen"):
        parsed.data.application_id = uuid4()
    with pytest.raises(ValidationError, match="frozen"):
        parsed.data.person.given_name = "Changed"
    with pytest.raises(ValidationError, match="frozen"):
        parsed.correlationid = uuid4()
    assert parsed.data.person.given_name == "Ana"
