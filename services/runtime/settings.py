"""Configuration, read only from `HOMEWARD_*` environment variables, split by who reads it.

Each process reads one settings class: a service its own (`services/<name>/settings.py`, built on
`ServiceSettings`), a sandbox provider its own, `homeward up` the devstack's, and the operator
commands theirs. The pieces here are what several of them share; a class holds only what its
process uses, so a service is never handed a setting (or a secret) that only another one needs.

Every loop, retry and batch has a named bound, units last.
"""

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.crypto import Keyring

ServiceName = Literal["registration", "travel", "arrival", "disbursement"]
SERVICE_NAMES: tuple[ServiceName, ...] = ("registration", "travel", "arrival", "disbursement")
Codec = Literal["gzip", "snappy", "lz4", "zstd"]


def masked_url(url: str) -> str:
    """A database URL fit to print or log: its password, if any, replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def revealed(secret: SecretStr | None) -> str | None:
    """A secret setting's value where the code must hand it on (a header, a client), or None."""
    return None if secret is None else secret.get_secret_value()


class HomewardSettings(BaseSettings):
    """What every Homeward process reads."""

    model_config = SettingsConfigDict(env_prefix="HOMEWARD_", frozen=True, extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        """`debug` is as good as `DEBUG`."""
        return value.upper() if isinstance(value, str) else value


class Infrastructure(HomewardSettings):
    """Where PostgreSQL and Kafka are. Unset means "embedded" for `homeward up`; a service needs both."""

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL, e.g. postgresql://homeward@db:5432/homeward"
    )
    kafka_bootstrap: str | None = Field(default=None, description="Kafka bootstrap servers, host:port[,host:port]")

    def require_infrastructure(self) -> tuple[str, str]:
        if not self.database_url or not self.kafka_bootstrap:
            raise SystemExit(
                "HOMEWARD_DATABASE_URL and HOMEWARD_KAFKA_BOOTSTRAP must be set to run a service; "
                "`homeward up` starts embedded ones and sets them for its services."
            )
        return self.database_url, self.kafka_bootstrap


class KafkaSecurity(HomewardSettings):
    """How every Kafka client of Homeward's (services, commands, `up` creating topics) reaches the broker."""

    # Encrypted and authenticated transport to the broker; every producer, consumer and admin
    # client of Homeward's uses these (services/runtime/kafka_security.py turns them into options).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How clients reach the broker: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_ssl_ca_file: Path | None = Field(
        default=None, description="PEM of the CA that signed the broker's certificate (SSL; default: the system's)"
    )
    kafka_ssl_cert_file: Path | None = Field(default=None, description="PEM of this client's certificate (mutual TLS)")
    kafka_ssl_key_file: Path | None = Field(default=None, description="PEM of this client's private key (mutual TLS)")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL)"
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user")
    kafka_sasl_password_file: Path | None = Field(default=None, description="A file holding the SASL user's password")

    @model_validator(mode="after")
    def _security_is_whole(self) -> "KafkaSecurity":
        sasl = self.kafka_security_protocol.startswith("SASL")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password_file):
            raise ValueError(
                f"HOMEWARD_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs HOMEWARD_KAFKA_SASL_MECHANISM, "
                "HOMEWARD_KAFKA_SASL_USERNAME and HOMEWARD_KAFKA_SASL_PASSWORD_FILE"
            )
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError("HOMEWARD_KAFKA_SSL_CERT_FILE and HOMEWARD_KAFKA_SSL_KEY_FILE go together (mutual TLS)")
        return self


class KafkaClients(KafkaSecurity):
    """How Homeward's Kafka clients behave, in a service or in an operator command."""

    # How stale a client's idea of the topics' partitions may get. A broker that lost its data may
    # come back with topics of fewer partitions (re-created on first use); until the producers
    # refresh, the embedded broker accepts their records on partitions that no consumer reads.
    kafka_metadata_max_age_ms: int = Field(
        default=300_000, ge=1_000, le=3_600_000, description="Clients refresh topic and partition metadata this often"
    )
    # Apache Kafka answers a fetch as soon as a record is there, so this bounds only how long an
    # idle consumer's fetch waits; the embedded broker holds every fetch this long, and measured
    # best at the default under load (see services/devstack/embedded.py).
    kafka_fetch_max_wait_ms: int = Field(
        default=500, ge=1, le=60_000, description="Longest the broker may hold a consumer's fetch while no record comes"
    )
    # Consumers read every codec Kafka defines whatever this says; this chooses only how Homeward's
    # own producers (relays, dead letters, operator commands, the demo's apps) write. Measured on
    # one 2-core machine with broker and services beside each other: see the README.
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="none", description="Codec Homeward's producers compress record batches with"
    )

    @property
    def kafka_compression_type(self) -> Codec | None:
        """The codec in the form Kafka clients take it (None for no compression)."""
        return None if self.kafka_compression == "none" else self.kafka_compression


class HttpListener(HomewardSettings):
    http_host: str = Field(default="127.0.0.1", description="Interface the HTTP endpoints listen on")


AES_KEY_BYTES = 32
"""AES-256: a data key is exactly 32 bytes (64 hex characters)."""
HMAC_KEY_BYTES_MIN = 32
"""An HMAC key shorter than the hash's 32 bytes is weaker than the hash (RFC 2104, section 3)."""
SECRET_FILE_BYTES_MAX = 65536
MAKE_ONE = "`openssl rand -hex 32` makes one; `homeward up` generates its own"


def secret_files(*names: str) -> Any:
    """A `model_validator(mode="before")` that reads each secret `name` from the file named by
    `<name>_file` (HOMEWARD_<NAME>_FILE: a mounted secret) when the variable itself is unset;
    both set is refused, so nobody wonders which one counts."""

    def read(cls: type, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in names:
            path = data.get(f"{name}_file")
            if not path:
                continue
            variable = f"HOMEWARD_{name.upper()}"
            if data.get(name):
                raise ValueError(f"set {variable} or {variable}_FILE, not both")
            try:
                with open(path, "rb") as file:
                    data[name] = file.read(SECRET_FILE_BYTES_MAX).decode().strip()
            except (OSError, UnicodeDecodeError) as error:
                raise ValueError(f"{variable}_FILE: cannot read {path} ({type(error).__name__})") from None
        return data

    return model_validator(mode="before")(read)


def hex_key(value: SecretStr | None, variable: str, *, exactly: int | None = None, at_least: int = 0) -> None:
    if value is None:
        return
    text = value.get_secret_value()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{variable} must be hex ({MAKE_ONE})") from None
    if exactly is not None and len(raw) != exactly:
        raise ValueError(f"{variable} must be {exactly * 2} hex characters, a {exactly}-byte key ({MAKE_ONE})")
    if len(raw) < at_least:
        raise ValueError(f"{variable} must be at least {at_least * 2} hex characters ({MAKE_ONE})")


class SealedData(HomewardSettings):
    """The key that opens `sealed` traveler data: registration, travel and disbursement hold it, never arrival."""

    data_key: SecretStr | None = Field(
        default=None, description="Hex 32-byte AES-256-GCM key for `sealed` (registration, travel, disbursement)"
    )
    data_key_file: Path | None = Field(default=None, description="A file holding HOMEWARD_DATA_KEY, instead of it")
    data_keys_retired: SecretStr | None = Field(
        default=None,
        description="Comma-separated hex data keys retired by a rotation: what they sealed stays readable",
    )
    data_keys_retired_file: Path | None = Field(
        default=None, description="A file holding HOMEWARD_DATA_KEYS_RETIRED, instead of it"
    )

    _data_key_from_file = secret_files("data_key", "data_keys_retired")

    @field_validator("data_key")
    @classmethod
    def _aes_256(cls, value: SecretStr | None) -> SecretStr | None:
        hex_key(value, "HOMEWARD_DATA_KEY", exactly=AES_KEY_BYTES)
        return value

    @field_validator("data_keys_retired")
    @classmethod
    def _each_aes_256(cls, value: SecretStr | None) -> SecretStr | None:
        for key in retired_keys(revealed(value)):
            hex_key(SecretStr(key), "HOMEWARD_DATA_KEYS_RETIRED (each key)", exactly=AES_KEY_BYTES)
        return value

    def require_data_key(self) -> Keyring:
        """The data key that seals, with the retired ones that still open what they sealed."""
        if self.data_key is None:
            raise SystemExit("HOMEWARD_DATA_KEY is not set (64 hex characters); `homeward up` generates one.")
        retired = tuple(bytes.fromhex(key) for key in retired_keys(revealed(self.data_keys_retired)))
        return Keyring(bytes.fromhex(self.data_key.get_secret_value()), retired)


def retired_keys(listed: str | None) -> list[str]:
    """The hex keys of a comma-separated list (HOMEWARD_DATA_KEYS_RETIRED)."""
    return [key.strip() for key in (listed or "").split(",") if key.strip()]


class ProviderTls(HomewardSettings):
    """How a service trusts its provider's HTTPS certificate (payouts, travel), and the client
    certificate it proves itself with where the provider asks for one (mutual TLS)."""

    provider_ca_file: Path | None = Field(
        default=None, description="PEM of the CA that signed the providers' HTTPS certificates (default: the system's)"
    )
    provider_cert_file: Path | None = Field(
        default=None, description="PEM of the client certificate presented to the providers (mutual TLS)"
    )
    provider_key_file: Path | None = Field(default=None, description="PEM of that client certificate's private key")

    @model_validator(mode="after")
    def _certificate_is_whole(self) -> "ProviderTls":
        if (self.provider_cert_file is None) != (self.provider_key_file is None):
            raise ValueError("HOMEWARD_PROVIDER_CERT_FILE and HOMEWARD_PROVIDER_KEY_FILE go together (mutual TLS)")
        return self

    def provider_client_cert(self) -> tuple[Path, Path] | None:
        """The client certificate and its key, or None."""
        if self.provider_cert_file is None or self.provider_key_file is None:
            return None
        return self.provider_cert_file, self.provider_key_file


class PayoutProviderAccess(HomewardSettings):
    """The credential disbursement and the commands present to the payout provider."""

    payout_provider_token: SecretStr | None = Field(
        default=None, description="Bearer token sent with every call to the payout provider"
    )


class PayoutCallbacks(HomewardSettings):
    """The key both ends of the payout callbacks hold: the provider signs, disbursement checks."""

    payout_callback_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key signing payout notifications (provider and disbursement)"
    )
    payout_callback_secret_file: Path | None = Field(
        default=None, description="A file holding HOMEWARD_PAYOUT_CALLBACK_SECRET, instead of it"
    )

    _callback_secret_from_file = secret_files("payout_callback_secret")

    @field_validator("payout_callback_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # Used as text (both ends sign with its UTF-8 bytes), so its length is what counts.
        if value is not None and len(value.get_secret_value().encode()) < HMAC_KEY_BYTES_MIN:
            raise ValueError(
                f"HOMEWARD_PAYOUT_CALLBACK_SECRET must be at least {HMAC_KEY_BYTES_MIN} characters ({MAKE_ONE})"
            )
        return value


class PiiRetention(HomewardSettings):
    """How long personal data outlives its case (services/runtime/retention.py)."""

    pii_retention_days: int = Field(
        default=90,
        ge=0,
        le=3650,
        description="Days after a case closes (paid, failed, rejected at arrival, booking failed) before its "
        "personal data is erased; 0 erases at the next sweep",
    )


class ServiceSettings(Infrastructure, KafkaClients, HttpListener, PiiRetention):
    """What every service process reads: the runtime's bounds (consumer, relay, re-drive, pool, workers)."""

    # Consumer and outbox relay bounds.
    consumer_batch_size_max: int = Field(default=500, ge=1, le=10_000)
    consumer_batch_timeout_ms: int = Field(default=50, ge=1, le=10_000)
    consumer_retry_backoff_ms: int = Field(default=500, ge=1, description="Pause before a failed batch is retried")
    # How fast the consumer group notices a member that died without leaving (SIGKILL, power loss):
    # until then its partitions have no reader. Apache Kafka's defaults; Kafka refuses a session
    # timeout under its group.min.session.timeout.ms (6 s by default).
    kafka_session_timeout_ms: int = Field(
        default=10_000, ge=1_000, le=300_000, description="A consumer silent this long is dropped from its group"
    )
    kafka_heartbeat_interval_ms: int = Field(
        default=3_000, ge=100, le=100_000, description="How often a consumer tells its group it is alive"
    )
    migrate_on_start: bool = Field(
        default=True,
        description="Apply the service's pending migrations at start; off where a migration step runs first "
        "(`homeward up`, docker-compose's migrate job)",
    )
    redrive_after_seconds: int = Field(
        default=300, ge=1, description="An open case with no downstream progress this long has its events resent"
    )
    redrive_cap_seconds: int = Field(default=3600, ge=1, description="Longest wait between two re-drives of a case")
    redrive_interval_ms: int = Field(default=5_000, ge=10, description="How often the re-drive sweeper looks")
    outbox_retention_hours: int = Field(
        default=1080, ge=1, description="Sent outbox rows of closed cases are kept this long (for re-driving)"
    )
    erasure_interval_ms: int = Field(
        default=60_000, ge=10, le=86_400_000, description="How often a service looks for cases due for erasure"
    )
    handler_attempts_max: int = Field(
        default=3, ge=1, le=20, description="Tries of a failing event before it is dead-lettered"
    )
    handler_backoff_ms: int = Field(
        default=100, ge=1, description="First pause between tries of a failing event (doubles)"
    )
    relay_batch_size_max: int = Field(default=1000, ge=1, le=10_000)
    relay_poll_interval_ms: int = Field(
        default=1_000, ge=1, le=60_000, description="How often the relay looks unwoken (commits wake it at once)"
    )
    relay_retry_backoff_ms: int = Field(
        default=500, ge=1, le=60_000, description="First pause after the relay failed to publish (doubles)"
    )
    relay_retry_backoff_max_ms: int = Field(
        default=10_000, ge=1, le=600_000, description="Longest pause between two failed publishing passes"
    )
    database_pool_size_max: int = Field(default=8, ge=2, le=100)
    database_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0)

    # Workers (travel booking, arrival sweep, payouts).
    worker_poll_interval_ms: int = Field(default=50, ge=1, le=60_000)
    worker_fallback_poll_ms: int = Field(
        default=1_000, ge=1, le=60_000, description="How often a worker woken by commits looks unwoken"
    )
    worker_batch_size_max: int = Field(default=200, ge=1, le=10_000)
    worker_concurrency_max: int = Field(default=32, ge=1, le=1_000)

    metrics_token: SecretStr | None = Field(
        default=None, description="When set, /metrics answers only `Authorization: Bearer <token>`"
    )
    http_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="Port of a service's /health and /ready (disbursement: also /callbacks/payouts); 0: none",
    )

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> "ServiceSettings":
        if self.kafka_heartbeat_interval_ms >= self.kafka_session_timeout_ms:
            raise ValueError(
                "HOMEWARD_KAFKA_HEARTBEAT_INTERVAL_MS must be below HOMEWARD_KAFKA_SESSION_TIMEOUT_MS "
                "(a third of it is usual)"
            )
        return self


class StateDirectory(HomewardSettings):
    """Where `homeward up` keeps its data; the operator commands find a running one there."""

    state_dir: Path = Field(default=Path(".homeward"), description="Where `homeward up` keeps data and secrets")
