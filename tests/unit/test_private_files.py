"""Secrets and runtime.json are the owner's only, and passwords are never printed."""

import stat
from pathlib import Path

import pytest

from services.devstack.running import write_private
from services.devstack.supervisor import load_or_create_secrets
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
