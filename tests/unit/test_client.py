"""contracts.client, the publisher helper for upstream apps: the envelope, the key and the
signature it builds are what the contract asks, and what it cannot build right it refuses."""

import json
from uuid import uuid4

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from contracts.client import Publisher, Signer
from contracts.events import EVIDENCE_TOPIC, RegistrationSubmitted
from contracts.registry import envelope_adapter
from contracts.signing import SIGNATURE_HEADER, SIGNER_HEADER, decode_signature, verifies
from tests.unit.factories import application, evidence_data, submission

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_a_registration_is_an_envelope_keyed_by_its_application() -> None:
    data = submission()
    correlation = uuid4()
    record = Publisher(source="registration-app").record(RegistrationSubmitted.TOPIC, data, correlationid=correlation)
    envelope = envelope_adapter(RegistrationSubmitted.TOPIC).validate_json(record.value)
    assert record.topic == RegistrationSubmitted.TOPIC and record.key == data["application_id"].encode()
    assert envelope.subject == data["application_id"] and envelope.correlationid == correlation
    assert envelope.id == record.envelope_id and envelope.causationid is None and record.headers == []
    again = Publisher(source="registration-app").record(RegistrationSubmitted.TOPIC, data, correlationid=correlation)
    assert again.envelope_id != record.envelope_id and again.key == record.key, "a safe resend: a new envelope"


def test_a_model_instance_is_taken_as_its_json() -> None:
    model = application()
    record = Publisher(source="registration-app").record(RegistrationSubmitted.TOPIC, model)
    assert json.loads(record.value)["data"]["application_id"] == str(model.application_id)


def test_evidence_is_signed_over_its_exact_bytes() -> None:
    publisher = Publisher(source="carrier-xh", signer=Signer("carrier-xh-2026", KEY))
    cause = uuid4()
    record = publisher.record(EVIDENCE_TOPIC, evidence_data("carrier"), causationid=cause)
    headers = dict(record.headers)
    assert headers[SIGNER_HEADER] == b"carrier-xh-2026"
    signature = decode_signature(headers[SIGNATURE_HEADER])
    assert signature is not None and verifies(PUBLIC, signature, record.value)
    assert not verifies(PUBLIC, signature, record.value.replace(b"landed", b"boarded"))
    assert json.loads(record.value)["causationid"] == str(cause)
    assert record.key == json.loads(record.value)["data"]["case_id"].encode()


def test_what_cannot_be_right_is_refused() -> None:
    with pytest.raises(ValueError, match="must be signed"):
        Publisher(source="carrier-xh").record(EVIDENCE_TOPIC, evidence_data("carrier"))
    with pytest.raises(ValueError, match="not a topic upstream apps publish to"):
        Publisher(source="app").record("stipend.disbursed.v1", {"case_id": str(uuid4())})
    with pytest.raises(ValidationError):
        Publisher(source="app").record(RegistrationSubmitted.TOPIC, submission(person={"given_name": ""}))
