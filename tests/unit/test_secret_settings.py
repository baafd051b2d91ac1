"""Secrets are checked at start (length, hex) and can come from files (HOMEWARD_*_FILE)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.registration.settings import RegistrationSettings
from services.runtime.crypto import Keyring
from services.runtime.settings import PayoutCallbacks, SealedData

KEY = "ab" * 32


def test_a_data_key_must_be_an_aes_256_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMEWARD_DATA_KEY", KEY)
    assert SealedData().require_data_key() == Keyring(bytes.fromhex(KEY))
    for wrong, says in (("ab" * 16, "64 hex characters"), ("zz" * 32, "must be hex")):
        monkeypatch.setenv("HOMEWARD_DATA_KEY", wrong)
        with pytest.raises(ValidationError, match=says):
            SealedData()


def test_hmac_keys_are_at_least_32_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMEWARD_IDENTITY_SECRET", "ab" * 16)
    with pytest.raises(ValidationError, match="at least 64 hex characters"):
        RegistrationSettings()
    monkeypatch.setenv("HOMEWARD_PAYOUT_CALLBACK_SECRET", "short")
    with pytest.raises(ValidationError, match="at least 32 characters"):
        PayoutCallbacks()


def test_a_secret_can_come_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "data-key"
    path.write_text(KEY + "\n")  # as `openssl rand -hex 32 > file` writes it
    monkeypatch.setenv("HOMEWARD_DATA_KEY_FILE", str(path))
    assert SealedData().require_data_key() == Keyring(bytes.fromhex(KEY))
    monkeypatch.setenv("HOMEWARD_DATA_KEY", KEY)
    with pytest.raises(ValidationError, match="not both"):
        SealedData()


def test_an_unreadable_secret_file_says_which(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOMEWARD_IDENTITY_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="HOMEWARD_IDENTITY_SECRET_FILE: cannot read"):
        RegistrationSettings()


def test_retired_data_keys_are_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMEWARD_DATA_KEY", KEY)
    monkeypatch.setenv("HOMEWARD_DATA_KEYS_RETIRED", f"{'cd' * 32}, {'ef' * 32}")
    assert SealedData().require_data_key().retired == (bytes.fromhex("cd" * 32), bytes.fromhex("ef" * 32))
    monkeypatch.setenv("HOMEWARD_DATA_KEYS_RETIRED", f"{'cd' * 32},{'ef' * 8}")
    with pytest.raises(ValidationError, match="HOMEWARD_DATA_KEYS_RETIRED"):
        SealedData()
