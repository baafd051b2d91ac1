"""Secrets and runtime.json are the owner's only, and passwords are never printed."""

import json
import stat
from pathlib import Path

import pytest

from services.devstack.running import (
    ATTESTATION_KEYS,
    DATA_KEY,
    DATA_KEYS,
    DISBURSEMENT_DATA_KEY,
    RETIRED_DATA_KEYS,
    TRAVEL_DATA_KEY,
    retired_name,
    write_private,
)
from services.devstack.supervisor import SECRETS_BY_SERVICE, load_or_create_secrets
from services.runtime.settings import masked_url


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_private_file_is_the_owners_only_even_over_a_stale_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "runtime.json"
    stale = tmp_path / "runtime.json.tmp"
    stale.write_text("left by a crash")
    stale.chmod(0o644)
    write_private(target, '{"database_url": "postgresql://u:p@h/db"}')
    assert mode(target) == 0o600
    assert not stale.exists()
    assert target.read_text() == '{"database_url": "postgresql://u:p@h/db"}'


def test_generated_secrets_are_the_owners_only(tmp_path: Path) -> None:
    load_or_create_secrets(tmp_path)
    assert mode(tmp_path / "secrets.json") == 0o600


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://homeward:s3cret@db:5432/homeward", "postgresql://homeward:***@db:5432/homeward"),
        (
            "postgresql://homeward:p%40ss@db/homeward?sslmode=require",
            "postgresql://homeward:***@db/homeward?sslmode=require",
        ),
        ("postgresql://postgres@127.0.0.1:5432/homeward", "postgresql://postgres@127.0.0.1:5432/homeward"),
        ("postgresql://127.0.0.1/homeward", "postgresql://127.0.0.1/homeward"),
    ],
    ids=["password", "escaped-password-and-query", "no-password", "no-user"],
)
def test_database_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_each_holder_gets_a_data_key_of_its_own_and_registration_the_readers_to_wrap_with(tmp_path: Path) -> None:
    secrets = load_or_create_secrets(tmp_path)
    own = {holder: secrets[name] for holder, name in DATA_KEYS.items()}
    assert len(set(own.values())) == 3
    for holder in ("travel", "disbursement"):
        [data_key] = [secret for variable, secret in SECRETS_BY_SERVICE[holder].items() if variable == DATA_KEY]
        assert secrets[data_key] == own[holder]
    registration = SECRETS_BY_SERVICE["registration"]
    assert {registration[TRAVEL_DATA_KEY], registration[DISBURSEMENT_DATA_KEY]} == {
        TRAVEL_DATA_KEY,
        DISBURSEMENT_DATA_KEY,
    }
    assert TRAVEL_DATA_KEY not in SECRETS_BY_SERVICE["disbursement"].values(), "disbursement cannot open travel's part"
    assert DISBURSEMENT_DATA_KEY not in SECRETS_BY_SERVICE["travel"].values(), "nor travel disbursement's"
    assert SECRETS_BY_SERVICE["arrival"] == {ATTESTATION_KEYS: ATTESTATION_KEYS}, (
        "arrival: no data key, only its signing keys"
    )


def test_a_state_dir_whose_one_data_key_sealed_everything_keeps_it_readable_for_the_readers(tmp_path: Path) -> None:
    old, older = "aa" * 32, "bb" * 32
    write_private(tmp_path / "secrets.json", json.dumps({DATA_KEY: old, RETIRED_DATA_KEYS: older}))
    secrets = load_or_create_secrets(tmp_path)
    assert secrets[DATA_KEY] == old, "registration keeps its key"
    for name in (TRAVEL_DATA_KEY, DISBURSEMENT_DATA_KEY):
        assert secrets[name] not in (old, older)
        assert secrets[retired_name(name)] == f"{old},{older}"
