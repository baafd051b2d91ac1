"""`homeward signers add|revoke|list` as an operator runs them, against a real PostgreSQL."""

import json
from pathlib import Path
from subprocess import CompletedProcess
from uuid import uuid4

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts.signing import public_key_pem
from tests.conftest import Infra
from tests.support import homeward_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def migrated(infra: Infra) -> None:
    done = homeward_cli("migrate", "--service", "arrival", HOMEWARD_DATABASE_URL=infra.database_url)
    assert done.returncode == 0, done.stderr


def signers(infra: Infra, *arguments: str) -> CompletedProcess[str]:
    return homeward_cli(
        "signers", *arguments, HOMEWARD_DATABASE_URL=infra.database_url, HOMEWARD_OPERATOR="test-operator"
    )


def key_file(tmp_path: Path, name: str = "key.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(public_key_pem(Ed25519PrivateKey.generate()))
    return path


def test_a_signer_is_added_once_and_listed(infra: Infra, tmp_path: Path):
    signer_id, pem = f"carrier-{uuid4().hex[:8]}", key_file(tmp_path)
    first = signers(infra, "add", "--id", signer_id, "--source", "carrier", "--public-key", str(pem), "--json")
    assert first.returncode == 0, first.stderr
    added = json.loads(first.stdout)
    assert added["added"] is True and added["source"] == "carrier" and len(added["fingerprint"]) == 16
    again = signers(infra, "add", "--id", signer_id, "--source", "carrier", "--public-key", str(pem))
    assert again.returncode == 0, again.stderr
    assert "already registered, unchanged" in again.stdout
    listed = json.loads(signers(infra, "list", "--json").stdout)
    assert [entry for entry in listed if entry["signer_id"] == signer_id] == [
        {k: added[k] for k in ("signer_id", "source", "fingerprint", "office_code", "added_at", "revoked_at")}
    ]


def test_the_same_id_with_another_key_is_refused_and_says_what_to_do(infra: Infra, tmp_path: Path):
    signer_id = f"app-{uuid4().hex[:8]}"
    first = signers(infra, "add", "--id", signer_id, "--source", "participant_app",
                    "--public-key", str(key_file(tmp_path, "a.pem")))  # fmt: skip
    assert first.returncode == 0, first.stderr
    other = signers(infra, "add", "--id", signer_id, "--source", "participant_app",
                    "--public-key", str(key_file(tmp_path, "b.pem")))  # fmt: skip
    assert other.returncode == 2
    assert "registered with another key" in other.stderr and "new id" in other.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--source", "carrier", "--office-code", "TGU-01"], "only a partner_office signer"),
        (["--source", "airline"], "source must be one of"),
    ],
    ids=["office-for-a-carrier", "unknown-source"],
)
def test_entries_out_of_scope_are_refused(infra: Infra, tmp_path: Path, arguments: list[str], message: str):
    refused = signers(infra, "add", "--id", f"x-{uuid4().hex[:8]}", "--public-key", str(key_file(tmp_path)), *arguments)
    assert refused.returncode == 2 and message in refused.stderr


def test_a_private_key_file_is_refused(infra: Infra, tmp_path: Path):
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "private.pem"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    refused = signers(infra, "add", "--id", f"x-{uuid4().hex[:8]}", "--source", "carrier", "--public-key", str(path))
    assert refused.returncode == 2 and "private key" in refused.stderr


def test_a_revocation_keeps_its_first_time(infra: Infra, tmp_path: Path):
    signer_id = f"office-{uuid4().hex[:8]}"
    added = signers(infra, "add", "--id", signer_id, "--source", "partner_office", "--office-code", "GUA-01",
                    "--public-key", str(key_file(tmp_path)))  # fmt: skip
    assert added.returncode == 0, added.stderr
    first = json.loads(signers(infra, "revoke", "--id", signer_id, "--json").stdout)
    second = json.loads(signers(infra, "revoke", "--id", signer_id, "--json").stdout)
    assert first["revoked_at"] == second["revoked_at"]
    unknown = signers(infra, "revoke", "--id", "never-registered")
    assert unknown.returncode == 2 and "signers list" in unknown.stderr
