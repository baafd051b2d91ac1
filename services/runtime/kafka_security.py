"""How Homeward's Kafka clients secure their connection, from the `HOMEWARD_KAFKA_*` settings:
TLS (with a CA and, for mutual TLS, a client certificate) and SASL (PLAIN or SCRAM).

FastStream's security objects carry it for the services' broker; its own `parse_security` turns
them into the options the plain aiokafka clients take (relays, the commands, the demo's apps),
so both paths name the same protocol, context and credentials.
"""

from typing import Any

from aiokafka.helpers import create_ssl_context
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from services.runtime.settings import KafkaSecurity

SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
PASSWORD_FILE_BYTES_MAX = 4096


def security(settings: KafkaSecurity) -> BaseSecurity | None:
    """FastStream's security for the settings; None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    tls = protocol in ("SSL", "SASL_SSL")
    context = (
        create_ssl_context(
            cafile=_path(settings.kafka_ssl_ca_file),
            certfile=_path(settings.kafka_ssl_cert_file),
            keyfile=_path(settings.kafka_ssl_key_file),
        )
        if tls
        else None
    )
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    assert settings.kafka_sasl_mechanism and settings.kafka_sasl_username and settings.kafka_sasl_password_file
    with open(settings.kafka_sasl_password_file, "rb") as file:
        password = file.read(PASSWORD_FILE_BYTES_MAX).decode().strip()
    kind = SASL[settings.kafka_sasl_mechanism]
    return kind(settings.kafka_sasl_username, password, ssl_context=context, use_ssl=tls)


def client_options(settings: KafkaSecurity) -> dict[str, Any]:
    """The keyword arguments an aiokafka producer, consumer or admin client takes for the settings."""
    options: dict[str, Any] = parse_security(security(settings))
    return options


def _path(path: Any) -> str | None:
    return None if path is None else str(path)
