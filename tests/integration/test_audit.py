"""The audit trail: every operator command that changes state names its operator and leaves a
record that nobody can change afterwards, against a real PostgreSQL."""

import json
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts.signing import public_key_pem
from tests.conftest import Infra
from tests.support import homeward_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def migrated(infra: Infra) -> None:
    done = homeward_cli("migrate", HOMEWARD_DATABASE_URL=infra.database_url)
    assert done.returncode == 0, done.stderr
    assert "audit:" in done.stdout


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "signer.pem"
    path.write_bytes(public_key_pem(Ed25519PrivateKey.generate()))
    return path


def audit_list(infra: Infra) -> list[dict[str, object]]:
    listed = homeward_cli("audit", "list", "--json", HOMEWARD_DATABASE_URL=infra.database_url)
    assert listed.returncode == 0, listed.stderr
    actions: list[dict[str, object]] = json.loads(listed.stdout)
    return actions


def test_a_change_without_an_operator_is_refused_and_changes_nothing(infra: Infra, tmp_path: Path):
    signer_id = f"carrier-{uuid4().hex[:8]}"
    refused = homeward_cli(
        "signers", "add", "--id", signer_id, "--source", "carrier", "--public-key", str(key_file(tmp_path)),
        HOMEWARD_DATABASE_URL=infra.database_url,
    )  # fmt: skip
    assert refused.returncode == 2 and "--operator" in refused.stderr
    listed = homeward_cli("signers", "list", "--json", HOMEWARD_DATABASE_URL=infra.database_url)
    assert signer_id not in listed.stdout


def test_each_change_is_recorded_with_who_what_and_how(infra: Infra, tmp_path: Path):
    signer_id = f"office-{uuid4().hex[:8]}"
    added = homeward_cli(
        "signers", "add", "--id", signer_id, "--source", "partner_office", "--public-key", str(key_file(tmp_path)),
        "--operator", "ana.ops", HOMEWARD_DATABASE_URL=infra.database_url,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    revoked = homeward_cli("signers", "revoke", "--id", signer_id,
                           HOMEWARD_DATABASE_URL=infra.database_url, HOMEWARD_OPERATOR="ben.ops")  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    mine = [action for action in audit_list(infra) if dict(action["arguments"]).get("id") == signer_id]  # type: ignore[call-overload]
    assert [(action["operator"], action["command"]) for action in mine] == [
        ("ben.ops", "signers revoke"),  # newest first
        ("ana.ops", "signers add"),
    ]
    assert mine[1]["outcome"] == {"added": True}
    assert dict(mine[1]["arguments"])["source"] == "partner_office"  # type: ignore[call-overload]


async def test_the_trail_is_append_only(infra: Infra, database: asyncpg.Connection):
    await database.execute("INSERT INTO audit.operator_actions (operator, command) VALUES ('someone', 'ledger fund')")
    for statement in (
        "UPDATE audit.operator_actions SET operator = 'nobody'",
        "DELETE FROM audit.operator_actions",
        "TRUNCATE audit.operator_actions",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await database.execute(statement)


async def test_a_worlds_signers_are_registered_with_their_lines_in_the_trail(
    infra: Infra, database: asyncpg.Connection
):
    """The demo's, chaos's and the benchmarks' worlds register their signers as an operator does,
    through arrival's own role, and the trail says so."""
    from services.ops.world import WORLD_OPERATOR, EvidenceSigners

    signers = EvidenceSigners.generate(uuid4().hex[:8])
    await signers.register(infra.role_urls["arrival"])
    ids = [signer_id for signer_id, _ in signers.keys.values()]
    rows = await database.fetch(
        "SELECT operator, command FROM audit.operator_actions WHERE arguments->>'id' = ANY($1::text[])", ids
    )
    assert sorted((row["operator"], row["command"]) for row in rows) == [(WORLD_OPERATOR, "signers add")] * len(ids)
