"""The examples of the contract's v1.1 topics (contracts/examples/): each is a valid envelope of its
topic, together they cover every new topic and reason, and the attestation verifies offline, with
`homeward attestation verify` too."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import OKPKey
from typer.testing import CliRunner

from contracts import attestation
from contracts.events import ArrivalAttested, CaseWithdrawn, StipendHeld, WithdrawalRefused, WithdrawalRequested
from contracts.registry import envelope_adapter
from services.ops.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "contracts" / "examples"
JWKS = EXAMPLES / "attestation.jwks.json"


def _examples() -> list[Path]:
    return sorted(path for path in EXAMPLES.glob("*.json") if path != JWKS)


def _topic(path: Path) -> str:
    match = re.match(r"^(.+?\.v\d+)(\.|$)", path.stem)
    assert match, f"{path.name} is not named <topic>[.<variant>].json"
    return match.group(1)


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


@pytest.mark.parametrize("path", _examples(), ids=lambda path: path.name)
def test_every_example_is_a_valid_envelope_of_its_topic(path: Path) -> None:
    parsed = envelope_adapter(_topic(path)).validate_python(_load(path))
    assert parsed.type == _topic(path)


def test_the_examples_cover_every_v1_1_topic_and_reason() -> None:
    payloads = [envelope_adapter(_topic(path)).validate_python(_load(path)).data for path in _examples()]
    kinds = {type(payload) for payload in payloads}
    assert {WithdrawalRequested, CaseWithdrawn, WithdrawalRefused, ArrivalAttested, StipendHeld} <= kinds
    assert {p.channel for p in payloads if isinstance(p, WithdrawalRequested)} == {"participant_app", "partner_office"}
    assert {p.reason for p in payloads if isinstance(p, StipendHeld)} >= {"instrument_shared", "program_paused"}


def test_the_example_attestation_verifies_against_the_example_keys() -> None:
    [example] = [path for path in _examples() if _topic(path) == ArrivalAttested.TOPIC]
    data = _load(example)["data"]
    claims = attestation.verify(data["attestation"], attestation.public_key_set(JWKS.read_text()))
    assert str(claims.case_id) == data["case_id"]
    assert attestation.key_id_of(data["attestation"]) == data["key_id"]


def test_attestation_verify_prints_the_claims_and_exits_1_on_a_bad_or_unknown_key_token() -> None:
    [example] = [path for path in _examples() if _topic(path) == ArrivalAttested.TOPIC]
    token = _load(example)["data"]["attestation"]
    runner = CliRunner()
    good = runner.invoke(app, ["attestation", "verify", token, "--jwks", str(JWKS), "--json"])
    assert good.exit_code == 0, good.output
    assert json.loads(good.output)["case_id"] == _load(example)["data"]["case_id"]
    header, payload, signature = token.split(".")
    tampered = ".".join([header, payload, ("A" if signature[0] != "A" else "B") + signature[1:]])
    forged = runner.invoke(app, ["attestation", "verify", tampered, "--jwks", str(JWKS)])
    assert forged.exit_code == 1 and "does not verify" in forged.output
    stranger = attestation.Signer(attestation.new_key_set_json()).sign(
        attestation.verify(token, attestation.public_key_set(JWKS.read_text()))
    )
    unknown = runner.invoke(app, ["attestation", "verify", stranger, "--jwks", str(JWKS)])
    assert unknown.exit_code == 1 and "not among the program's keys" in unknown.output
    garbage = runner.invoke(app, ["attestation", "verify", "not-a-token", "--jwks", str(JWKS)])
    assert garbage.exit_code == 1


def test_a_key_set_rotates_and_every_token_of_its_keys_still_verifies() -> None:
    keys = attestation.new_key_set_json()
    claims = attestation.verify(
        _load(next(p for p in _examples() if _topic(p) == ArrivalAttested.TOPIC))["data"]["attestation"],
        attestation.public_key_set(JWKS.read_text()),
    )
    old = attestation.Signer(keys).sign(claims)
    rotated = attestation.rotated(keys)
    new = attestation.Signer(rotated)
    assert new.key_id != attestation.Signer(keys).key_id
    published = attestation.public_key_set(json.dumps(attestation.public_jwks(rotated)))
    assert attestation.verify(old, published) == attestation.verify(new.sign(claims), published) == claims
    assert all("d" not in key for key in attestation.public_jwks(rotated)["keys"]), "no private part published"


def test_a_signed_attestation_is_byte_for_byte_the_token_joserfc_makes() -> None:
    """The Signer writes the compact JWS itself (for speed); Ed25519 being deterministic, what it
    writes must be exactly what joserfc's serialize_compact writes for the same key and claims."""
    keys = attestation.new_key_set_json()
    signer = attestation.Signer(keys)
    claims = attestation.verify(
        _load(next(p for p in _examples() if _topic(p) == ArrivalAttested.TOPIC))["data"]["attestation"],
        attestation.public_key_set(JWKS.read_text()),
    )
    [key] = attestation.public_key_set(keys).keys
    private = OKPKey.import_key(json.loads(keys)["keys"][0])
    expected = jws.serialize_compact(
        {"alg": attestation.ALGORITHM, "kid": key.kid}, claims.model_dump_json(), private, algorithms=["EdDSA"]
    )
    assert signer.sign(claims) == expected
    assert attestation.verify(signer.sign(claims), attestation.public_key_set(keys)) == claims
