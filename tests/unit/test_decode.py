"""Reading a Kafka record: a valid one becomes an envelope; a bad one a coded, PII-free reason and DLQ headers."""

import hashlib
import json
from typing import Any
from uuid import UUID, uuid4

import pytest

from contracts.events import CarrierRecord, RegistrationSubmitted
from services.runtime import messages
from services.runtime.messages import (
    DETAIL_CHARS_MAX,
    ERROR_INVALID_ENVELOPE,
    ERROR_INVALID_JSON,
    ERROR_INVALID_PAYLOAD,
    ERROR_TYPE_MISMATCH,
    ERROR_UNKNOWN_TOPIC,
    Decoded,
    Undeliverable,
    decode,
)
from services.runtime.uow import ServiceDatabase, UnitOfWork
from tests.unit.factories import envelope, evidence_data, record, submission

SUBMITTED = "registration.submitted.v1"
EVIDENCE = "arrival.evidence.v1"
DLQ_HEADERS = {"x-error-code", "x-error-detail", "x-original-topic", "x-original-partition", "x-original-offset"}
PHONE_CANARY = "+15555550199"
NAME_CANARY = "Zebulon"


def _undeliverable(topic: str, value: Any, **where: int) -> Undeliverable:
    result = decode(record(topic, value, **where))
    assert isinstance(result, Undeliverable), f"expected a refusal, got {result!r}"
    return result


def _submitted(**overrides: Any) -> dict[str, Any]:
    return envelope(SUBMITTED, submission(**overrides))


# Valid records ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["carrier", "partner_office"])
def test_the_one_pass_decode_and_the_detailed_path_agree_on_a_valid_record(source: str) -> None:
    """Valid records are validated once from bytes; the detailed path (run only for refused ones)
    must read a valid record exactly the same way."""
    for topic, document in ((SUBMITTED, _submitted()), (EVIDENCE, envelope(EVIDENCE, evidence_data(source)))):
        raw = record(topic, document)
        fast, detailed = decode(raw), messages._undeliverable(raw)
        assert isinstance(fast, Decoded) and isinstance(detailed, Decoded)
        assert fast.envelope == detailed.envelope


def test_valid_submission_decodes_to_its_envelope() -> None:
    document = _submitted()

    result = decode(record(SUBMITTED, document, partition=2, offset=41))

    assert isinstance(result, Decoded)
    assert isinstance(result.envelope.data, RegistrationSubmitted)
    assert str(result.envelope.data.application_id) == document["data"]["application_id"]
    assert str(result.inbox_key) == document["id"]
    assert result.record.offset == 41


def test_valid_evidence_decodes_to_the_shape_of_its_source() -> None:
    result = decode(record(EVIDENCE, envelope(EVIDENCE, evidence_data("carrier"))))

    assert isinstance(result, Decoded)
    assert isinstance(result.envelope.data, CarrierRecord)


def test_same_event_delivered_twice_has_one_inbox_key() -> None:
    document = _submitted()

    first = decode(record(SUBMITTED, document, offset=1))
    again = decode(record(SUBMITTED, document, offset=9))

    assert isinstance(first, Decoded) and isinstance(again, Decoded)
    assert first.inbox_key == again.inbox_key


# Unreadable records ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"\xff\xfe{", b"{not json", b"", b'{"id": '], ids=["utf8", "text", "empty", "cut"])
def test_bytes_that_are_not_utf8_json_are_invalid_json(value: bytes) -> None:
    bad = _undeliverable(SUBMITTED, value)

    assert bad.code == ERROR_INVALID_JSON
    assert bad.application_id is None


@pytest.mark.parametrize("value", [[_submitted()], "a string", 42, None], ids=["array", "string", "number", "null"])
def test_json_that_is_not_an_object_is_an_invalid_envelope(value: Any) -> None:
    assert _undeliverable(SUBMITTED, value).code == ERROR_INVALID_ENVELOPE


@pytest.mark.parametrize("missing", ["specversion", "id", "time", "correlationid", "datacontenttype", "data"])
def test_envelope_missing_a_field_is_an_invalid_envelope_naming_it(missing: str) -> None:
    bad = _undeliverable(SUBMITTED, envelope(SUBMITTED, submission(), **{missing: ...}))

    assert bad.code == ERROR_INVALID_ENVELOPE
    assert bad.field == missing


def test_envelope_error_still_reads_the_application_id_for_a_rejection() -> None:
    data = submission()

    bad = _undeliverable(SUBMITTED, envelope(SUBMITTED, data, correlationid=None, specversion="0.3"))

    assert bad.code == ERROR_INVALID_ENVELOPE
    assert bad.application_id == UUID(data["application_id"])


def test_envelope_type_other_than_the_topic_is_a_type_mismatch() -> None:
    bad = _undeliverable(SUBMITTED, envelope(EVIDENCE, submission()))

    assert bad.code == ERROR_TYPE_MISMATCH
    assert bad.field == "type"
    assert SUBMITTED in bad.detail


def test_record_on_a_topic_without_a_contract_is_unknown_topic() -> None:
    assert _undeliverable("registration.submitted.v2", _submitted()).code == ERROR_UNKNOWN_TOPIC


# Payload violations --------------------------------------------------------------------------------


def test_payload_violation_names_the_payload_field_and_keeps_the_ids() -> None:
    document = _submitted(identity_document__expires_on="30/06/2030")

    bad = _undeliverable(SUBMITTED, document)

    assert bad.code == ERROR_INVALID_PAYLOAD
    assert bad.field == "identity_document.expires_on"
    assert bad.application_id == UUID(document["data"]["application_id"])
    assert bad.correlationid == UUID(document["correlationid"])
    assert bad.event_id == UUID(document["id"])


def test_payload_violation_inside_a_tagged_union_leaves_the_tag_out_of_the_path() -> None:
    bad = _undeliverable(EVIDENCE, envelope(EVIDENCE, evidence_data("carrier", flight_number="X")))

    assert bad.field == "flight_number"


def test_invalid_travel_booked_carrier_is_reported_on_the_carrier_field() -> None:
    case_id = str(uuid4())
    booked = {
        "case_id": case_id,
        "booking_id": "B-1",
        "carrier": "not an airline",
        "flight_number": "XH123",
        "origin_airport": "IAH",
        "destination_airport": "TGU",
        "scheduled_departure": "2026-11-23T12:00:00Z",
        "scheduled_arrival": "2026-11-23T18:00:00Z",
        "booked_at": "2026-11-22T11:00:00Z",
    }

    bad = _undeliverable("travel.booked.v1", envelope("travel.booked.v1", booked))

    assert bad.field == "carrier"


def test_unreadable_application_id_is_not_guessed() -> None:
    bad = _undeliverable(SUBMITTED, _submitted(application_id="app-17"))

    assert bad.code == ERROR_INVALID_PAYLOAD
    assert bad.field == "application_id"
    assert bad.application_id is None


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"passport_no": "X1234567"}, "passport_no"),
        ({"person__passport_no": "X1234567"}, "person.passport_no"),
    ],
)
def test_unknown_data_field_is_an_invalid_payload(override: dict[str, str], field: str) -> None:
    bad = _undeliverable(SUBMITTED, _submitted(**override))

    assert bad.code == ERROR_INVALID_PAYLOAD
    assert bad.field == field
    assert "X1234567" not in bad.detail


# No offending value in a detail -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "canary"),
    [
        ({"identity_document__expires_on": PHONE_CANARY}, PHONE_CANARY),
        ({"person__date_of_birth": NAME_CANARY}, NAME_CANARY),
        ({"identity_document__type": NAME_CANARY}, NAME_CANARY),
        ({"consent__data_processing": NAME_CANARY}, NAME_CANARY),
        ({"payout__msisdn": NAME_CANARY}, NAME_CANARY),
        ({"contact__email": PHONE_CANARY}, PHONE_CANARY),
        ({"person__nationality": NAME_CANARY}, NAME_CANARY),
        ({"destination": NAME_CANARY}, NAME_CANARY),
        ({"person__given_name": "Z" * 101}, "Z" * 101),
    ],
    ids=["date", "birth", "literal", "bool", "msisdn", "email", "country", "object", "too-long"],
)
def test_detail_never_contains_the_offending_value(override: dict[str, Any], canary: str) -> None:
    bad = _undeliverable(SUBMITTED, _submitted(**override))

    assert bad.code == ERROR_INVALID_PAYLOAD
    assert canary not in bad.detail
    assert canary not in json.dumps(bad.dead_letter_headers())


def test_detail_never_contains_other_fields_of_the_payload() -> None:
    document = _submitted(person__given_name=NAME_CANARY, contact__phone=PHONE_CANARY, consent__version=None)

    bad = _undeliverable(SUBMITTED, document)

    assert NAME_CANARY not in bad.detail
    assert PHONE_CANARY not in bad.detail


def test_detail_never_contains_an_invalid_payout_method() -> None:
    bad = _undeliverable(SUBMITTED, _submitted(payout__method=NAME_CANARY))

    assert NAME_CANARY not in bad.detail


# Dead-letter headers and inbox keys --------------------------------------------------------------------


def test_dead_letter_headers_are_exactly_the_five_contract_headers() -> None:
    bad = _undeliverable(SUBMITTED, b"{not json", partition=2, offset=1234)

    headers = bad.dead_letter_headers()

    assert set(headers) == DLQ_HEADERS
    assert headers["x-error-code"] == ERROR_INVALID_JSON
    assert headers["x-original-topic"] == SUBMITTED
    assert headers["x-original-partition"] == "2"
    assert headers["x-original-offset"] == "1234"
    assert all(isinstance(value, str) and value for value in headers.values())


def test_dead_letter_detail_is_bounded() -> None:
    bad = Undeliverable(record(SUBMITTED, b"x"), ERROR_INVALID_PAYLOAD, "problem; " * 200)

    assert len(bad.dead_letter_headers()["x-error-detail"]) == DETAIL_CHARS_MAX


def test_bad_record_inbox_key_is_topic_partition_offset() -> None:
    first = _undeliverable(SUBMITTED, b"{not json", partition=1, offset=7)
    replayed = _undeliverable(SUBMITTED, b"{not json", partition=1, offset=7)
    next_one = _undeliverable(SUBMITTED, b"{not json", partition=1, offset=8)

    assert first.inbox_key == UUID(hashlib.md5(f"{SUBMITTED}:1:7".encode()).hexdigest())
    assert replayed.inbox_key == first.inbox_key
    assert next_one.inbox_key != first.inbox_key


def test_dead_letter_copies_the_bytes_unchanged_to_the_dlq_topic() -> None:
    value = b'{"broken": \xff'
    bad = _undeliverable(SUBMITTED, value, partition=0, offset=3)
    uow = UnitOfWork(ServiceDatabase(None, "registration", None), connection=object())  # type: ignore[arg-type]

    uow.dead_letter(bad)

    [row] = uow.pending
    assert row.topic == f"{SUBMITTED}.dlq"
    assert row.value == value
    assert row.headers == bad.dead_letter_headers()
    assert row.event_id is None
