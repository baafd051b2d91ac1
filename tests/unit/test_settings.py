"""Settings refuse combinations that cannot work, naming the variables to fix."""

import pytest
from pydantic import ValidationError

from services.runtime.settings import Settings


def test_consumer_group_timing_defaults_are_apache_kafkas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOMEWARD_KAFKA_SESSION_TIMEOUT_MS", raising=False)
    monkeypatch.delenv("HOMEWARD_KAFKA_HEARTBEAT_INTERVAL_MS", raising=False)
    settings = Settings()
    assert (settings.kafka_session_timeout_ms, settings.kafka_heartbeat_interval_ms) == (10_000, 3_000)


def test_a_shorter_session_for_fast_failure_detection_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMEWARD_KAFKA_SESSION_TIMEOUT_MS", "3000")
    monkeypatch.setenv("HOMEWARD_KAFKA_HEARTBEAT_INTERVAL_MS", "1000")
    assert Settings().kafka_session_timeout_ms == 3000


def test_a_heartbeat_not_below_the_session_timeout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMEWARD_KAFKA_SESSION_TIMEOUT_MS", "3000")
    monkeypatch.setenv("HOMEWARD_KAFKA_HEARTBEAT_INTERVAL_MS", "3000")
    with pytest.raises(ValidationError, match="HOMEWARD_KAFKA_HEARTBEAT_INTERVAL_MS must be below"):
        Settings()
