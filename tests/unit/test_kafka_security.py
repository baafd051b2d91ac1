"""Kafka transport security, from the settings to the options every client takes."""

import ssl
from pathlib import Path

import pytest
from faststream.security import BaseSecurity, SASLScram512
from pydantic import ValidationError

from services.runtime.kafka_security import client_options, security
from services.runtime.settings import KafkaSecurity


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert security(KafkaSecurity()) is None
    assert client_options(KafkaSecurity()) == {}


def test_tls_gives_every_client_one_context(tmp_path: Path) -> None:
    settings = KafkaSecurity(kafka_security_protocol="SSL")
    options = client_options(settings)
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert isinstance(security(settings), BaseSecurity)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_tls_names_the_mechanism_user_and_password_from_its_file(tmp_path: Path, mechanism: str) -> None:
    password = tmp_path / "kafka-password"
    password.write_text("s3cret-pass\n")
    settings = KafkaSecurity(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="homeward-travel", kafka_sasl_password_file=password,
    )  # fmt: skip
    options = client_options(settings)
    assert (options["security_protocol"], options["sasl_mechanism"]) == ("SASL_SSL", mechanism)
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("homeward-travel", "s3cret-pass")
    assert isinstance(options["ssl_context"], ssl.SSLContext)


def test_sasl_without_tls_has_no_context(tmp_path: Path) -> None:
    password = tmp_path / "p"
    password.write_text("pw")
    settings = KafkaSecurity(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="u", kafka_sasl_password_file=password,
    )  # fmt: skip
    assert isinstance(security(settings), SASLScram512)
    assert client_options(settings)["security_protocol"] == "SASL_PLAINTEXT"
    assert client_options(settings)["ssl_context"] is None


def test_incomplete_settings_say_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMEWARD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError, match="HOMEWARD_KAFKA_SASL_MECHANISM"):
        KafkaSecurity()
    monkeypatch.setenv("HOMEWARD_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("HOMEWARD_KAFKA_SSL_CERT_FILE", "/etc/homeward/client.pem")
    with pytest.raises(ValidationError, match="go together"):
        KafkaSecurity()
