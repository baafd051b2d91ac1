"""Settings refuse combinations that cannot work, naming the variables to fix; each process reads
only its own concerns; the README's configuration table says who reads each variable."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.arrival.settings import ArrivalSettings
from services.ops.configuration import READERS, readers
from services.runtime.settings import ProviderTls, SealedData, ServiceSettings
from services.sandbox.settings import PayoutSandboxSettings, TravelSandboxSettings

README = Path(__file__).resolve().parents[2] / "README.md"
SERVICES = ("registration", "travel", "arrival", "disbursement")
TABLE_ROW = re.compile(r"^\| `(HOMEWARD_[A-Z0-9_]+)` \| [^|]* \| ([^|]+) \|", re.MULTILINE)


def test_consumer_group_timing_defaults_are_apache_kafkas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOMEWARD_KAFKA_SESSION_TIMEOUT_MS", raising=False)
    monkeypatch.delenv("HOMEWARD_KAFKA_HEARTBEAT_INTERVAL_MS", raising=False)
    settings = ServiceSettings()
    assert (settings.kafka_session_timeout_ms, settings.kafka_heartbeat_interval_ms) == (10_000, 3_000)


def test_a_shorter_session_for_fast_failure_detection_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMEWARD_KAFKA_SESSION_TIMEOUT_MS", "3000")
    monkeypatch.setenv("HOMEWARD_KAFKA_HEARTBEAT_INTERVAL_MS", "1000")
    assert ServiceSettings().kafka_session_timeout_ms == 3000


def test_a_heartbeat_not_below_the_session_timeout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMEWARD_KAFKA_SESSION_TIMEOUT_MS", "3000")
    monkeypatch.setenv("HOMEWARD_KAFKA_HEARTBEAT_INTERVAL_MS", "3000")
    with pytest.raises(ValidationError, match="HOMEWARD_KAFKA_HEARTBEAT_INTERVAL_MS must be below"):
        ServiceSettings()


def test_arrival_and_the_sandboxes_are_never_handed_a_program_secret() -> None:
    for settings_class in (ArrivalSettings, PayoutSandboxSettings, TravelSandboxSettings):
        assert not {"data_key", "identity_secret"} & set(settings_class.model_fields), settings_class


def test_no_service_reads_another_services_own_settings() -> None:
    shared = set(ServiceSettings.model_fields)
    own = {name: set(READERS[name][0].model_fields) - shared for name in SERVICES}
    for name, fields in own.items():
        for other in SERVICES:
            if other != name:
                # Shared on purpose: the data key (and its file), and the CA the providers' HTTPS is signed by.
                allowed = set(SealedData.model_fields) | set(ProviderTls.model_fields)
                assert not (fields & own[other]) - allowed, f"{name} and {other} share {fields & own[other]}"


def _readme_readers() -> dict[str, set[str]]:
    documented: dict[str, set[str]] = {}
    for variable, cell in TABLE_ROW.findall(README.read_text()):
        names = {name.strip() for name in cell.split(",")}
        if "every service" in names:
            names = (names - {"every service"}) | set(SERVICES)
        documented[variable] = names
    return documented


def test_the_readme_says_which_process_reads_each_variable() -> None:
    documented, actual = _readme_readers(), readers()
    assert sorted(set(actual) - set(documented)) == [], "add these to the README's configuration table"
    assert sorted(set(documented) - set(actual)) == [], "the README documents variables no process reads"
    wrong = {variable: (documented[variable], actual[variable]) for variable in actual
             if documented[variable] != actual[variable]}  # fmt: skip
    assert wrong == {}, "README 'read by' (left) differs from the settings classes (right)"


def test_the_log_level_may_be_written_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMEWARD_LOG_LEVEL", "debug")
    assert ServiceSettings().log_level == "DEBUG"
    monkeypatch.setenv("HOMEWARD_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError, match="log_level"):
        ServiceSettings()
