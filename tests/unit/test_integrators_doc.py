"""docs/integrators.md: its worked examples build valid, signed records with contracts.client, and
it explains every rejection and dead-letter code Homeward emits."""

import re
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.arrival.domain import (
    BAD_SIGNATURE,
    MALFORMED_SIGNATURE,
    OTHER_OFFICE,
    REVOKED_SIGNER,
    UNKNOWN_SIGNER,
    UNSIGNED,
    WRONG_SOURCE,
)
from services.arrival.handlers import EVIDENCE_UNAUTHENTICATED
from services.runtime import messages

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrators.md"
PYTHON = re.compile(r"```python\n(.*?)```", re.DOTALL)


class _Producer:
    """Stands in for aiokafka's producer: keeps what the example sends."""

    sent: list[tuple[Any, ...]] = []

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def send_and_wait(self, topic: str, value: bytes, key: bytes, headers: list[Any]) -> None:
        _Producer.sent.append((topic, value, key, headers))


async def test_the_worked_examples_build_valid_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aiokafka

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "carrier-xh.key").write_bytes(pem)
    monkeypatch.chdir(tmp_path)

    registration, evidence = PYTHON.findall(DOC.read_text())
    scope: dict[str, Any] = {}
    original = aiokafka.AIOKafkaProducer
    aiokafka.AIOKafkaProducer = _Producer  # type: ignore[misc]
    try:
        exec(compile("async def run():\n" + _indented(registration), "registration", "exec"), scope)
        await scope["run"]()
        scope.update(case_id=str(uuid4()), correlation_id_of_the_case=uuid4(), booked_event_id=uuid4())
        exec(compile("async def run():\n" + _indented(evidence), "evidence", "exec"), scope)
        await scope["run"]()
    finally:
        aiokafka.AIOKafkaProducer = original  # type: ignore[misc]
    topics = [sent[0] for sent in _Producer.sent]
    assert topics[-2:] == ["registration.submitted.v1", "arrival.evidence.v1"]
    assert dict(_Producer.sent[-1][3]).keys() == {"x-signer", "x-signature"}


def _indented(code: str) -> str:
    return "".join(f"    {line}\n" for line in code.splitlines())


def test_every_code_is_explained() -> None:
    text = DOC.read_text()
    codes = [messages.ERROR_INVALID_JSON, messages.ERROR_INVALID_ENVELOPE, messages.ERROR_TYPE_MISMATCH,
             messages.ERROR_INVALID_PAYLOAD, messages.ERROR_UNKNOWN_TOPIC, messages.ERROR_HANDLER,
             EVIDENCE_UNAUTHENTICATED, UNSIGNED, MALFORMED_SIGNATURE, UNKNOWN_SIGNER, REVOKED_SIGNER, WRONG_SOURCE,
             OTHER_OFFICE, BAD_SIGNATURE, "consent_missing", "ineligible_age", "ineligible_destination",
             "document_expired", "duplicate_registration"]  # fmt: skip
    for code in codes:
        assert f"`{code}`" in text, f"docs/integrators.md does not explain {code}"
