"""All configuration, read only from `HOMEWARD_*` environment variables.

Every loop, retry and batch has a named bound here, units last.
"""

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ServiceName = Literal["registration", "travel", "arrival", "disbursement"]
SERVICE_NAMES: tuple[ServiceName, ...] = ("registration", "travel", "arrival", "disbursement")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOMEWARD_", frozen=True, extra="ignore")

    # Infrastructure. Unset means "embedded" for `homeward up`; `homeward run` needs both.
    database_url: str | None = Field(
        default=None, description="PostgreSQL URL, e.g. postgresql://homeward@db:5432/homeward"
    )
    kafka_bootstrap: str | None = Field(default=None, description="Kafka bootstrap servers, host:port[,host:port]")
    state_dir: Path = Field(default=Path(".homeward"), description="Where `homeward up` keeps data and secrets")
    kafka_port: int = Field(default=19092, description="Port of the embedded broker")
    topic_partitions: int = Field(default=12, ge=1, le=1024, description="Partitions per topic created by `up`")

    # Program secrets. `homeward up` generates them into the state dir on first run.
    identity_secret: SecretStr | None = Field(
        default=None, description="Hex key for identity_key HMAC-SHA256 (registration only)"
    )
    data_key: SecretStr | None = Field(
        default=None, description="Hex 32-byte AES-256-GCM key for `sealed` (registration, travel, disbursement)"
    )

    # Program rules.
    program_amount: Decimal = Field(default=Decimal("1000.00"), description="Stipend per verified arrival")
    program_currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    program_budget: Decimal = Field(
        default=Decimal("10000000.00"), description="Budget funded once when the ledger is created"
    )
    arrival_window_seconds: int = Field(
        default=30 * 24 * 3600, ge=0, description="Evidence window after scheduled arrival"
    )

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
    # How stale a client's idea of the topics' partitions may get. A broker that lost its data may
    # come back with topics of fewer partitions (re-created on first use); until the producers
    # refresh, the embedded broker accepts their records on partitions that no consumer reads.
    kafka_metadata_max_age_ms: int = Field(
        default=300_000, ge=1_000, le=3_600_000, description="Clients refresh topic and partition metadata this often"
    )
    # Consumers read every codec Kafka defines whatever this says; this chooses only how Homeward's
    # own producers (relays, dead letters, operator commands, the demo's apps) write. Measured on
    # one 2-core machine with broker and services beside each other: see the README.
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="none", description="Codec Homeward's producers compress record batches with"
    )
    redrive_after_seconds: int = Field(
        default=300, ge=1, description="An open case with no downstream progress this long has its events resent"
    )
    redrive_cap_seconds: int = Field(default=3600, ge=1, description="Longest wait between two re-drives of a case")
    redrive_interval_ms: int = Field(default=5_000, ge=10, description="How often the re-drive sweeper looks")
    outbox_retention_hours: int = Field(
        default=1080, ge=1, description="Sent outbox rows of closed cases are kept this long (for re-driving)"
    )
    handler_attempts_max: int = Field(
        default=3, ge=1, le=20, description="Tries of a failing event before it is dead-lettered"
    )
    handler_backoff_ms: int = Field(
        default=100, ge=1, description="First pause between tries of a failing event (doubles)"
    )
    relay_batch_size_max: int = Field(default=1000, ge=1, le=10_000)
    relay_poll_interval_ms: int = Field(default=20, ge=1, le=60_000)
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
    worker_batch_size_max: int = Field(default=200, ge=1, le=10_000)
    worker_concurrency_max: int = Field(default=32, ge=1, le=1_000)
    arrival_sweep_interval_ms: int = Field(default=10_000, ge=10)
    booking_attempts_max: int = Field(default=5, ge=1, le=50)
    booking_backoff_base_ms: int = Field(default=200, ge=1)
    booking_backoff_max_ms: int = Field(default=30_000, ge=1)

    # Sandbox providers (embedded default).
    sandbox_travel_failure_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of transient booking errors"
    )
    sandbox_flight_departure_delay_seconds: int = Field(default=0, ge=0)
    sandbox_flight_duration_seconds: int = Field(default=0, ge=0)

    # Sandbox payout provider (`homeward sandbox payouts`). Faults apply to POST /payouts only.
    sandbox_payout_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the sandbox payout provider; 0 picks a free one"
    )
    sandbox_payout_store: Path | None = Field(
        default=None,
        description="SQLite file of the sandbox payout provider (default state_dir/sandbox/payouts.sqlite3)",
    )
    sandbox_payout_seed: int | None = Field(
        default=None, description="Seed of the sandbox's fault draws, for reproducible runs"
    )
    sandbox_payout_latency_ms: int = Field(
        default=0, ge=0, le=600_000, description="Pause before the sandbox answers a payout request"
    )
    sandbox_payout_error_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of payout requests answered 503 without paying"
    )
    sandbox_payout_ambiguous_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of payouts made but answered only after the ambiguous delay"
    )
    sandbox_payout_ambiguous_delay_ms: int = Field(
        default=10_000, ge=0, le=600_000, description="How late an ambiguous payout is answered"
    )
    sandbox_payout_decline_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of new payouts recorded as declined (for good)"
    )
    sandbox_payout_return_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of paid payouts that are returned after the return delay"
    )
    sandbox_payout_return_delay_ms: int = Field(
        default=2_000, ge=0, le=86_400_000, description="How long after payment a returned payout comes back"
    )

    # Payout provider as seen by disbursement, and its signed callbacks.
    payout_provider_url: str | None = Field(
        default=None, description="Base URL of the payout provider, e.g. http://127.0.0.1:8090"
    )
    payout_callback_url: str | None = Field(
        default=None, description="Where the payout provider sends its notifications (unset: recorded, not sent)"
    )
    payout_callback_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key signing payout notifications (provider and disbursement)"
    )
    http_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="Port of a service's /health and /ready (disbursement: also /callbacks/payouts); 0: none",
    )

    # Disbursement's side of the payout provider.
    payout_timeout_ms: int = Field(default=2_000, ge=1, description="How long disbursement waits for a payout answer")
    payout_attempts_max: int = Field(default=4, ge=1, le=20, description="Payout tries per pass before leaving it")
    payout_backoff_initial_ms: int = Field(default=100, ge=1, description="First pause between payout tries")
    callback_tolerance_seconds: int = Field(default=300, ge=1, description="Oldest signed callback accepted")
    http_host: str = Field(default="127.0.0.1", description="Interface the services' HTTP endpoints listen on")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> "Settings":
        if self.kafka_heartbeat_interval_ms >= self.kafka_session_timeout_ms:
            raise ValueError(
                "HOMEWARD_KAFKA_HEARTBEAT_INTERVAL_MS must be below HOMEWARD_KAFKA_SESSION_TIMEOUT_MS "
                "(a third of it is usual)"
            )
        return self

    @property
    def kafka_compression_type(self) -> Literal["gzip", "snappy", "lz4", "zstd"] | None:
        """The codec in the form Kafka clients take it (None for no compression)."""
        return None if self.kafka_compression == "none" else self.kafka_compression

    def require_infrastructure(self) -> tuple[str, str]:
        if not self.database_url or not self.kafka_bootstrap:
            raise SystemExit(
                "HOMEWARD_DATABASE_URL and HOMEWARD_KAFKA_BOOTSTRAP must be set to run a service; "
                "`homeward up` starts embedded ones and sets them for its services."
            )
        return self.database_url, self.kafka_bootstrap

    def require_data_key(self) -> bytes:
        if self.data_key is None:
            raise SystemExit("HOMEWARD_DATA_KEY is not set (64 hex characters); `homeward up` generates one.")
        return bytes.fromhex(self.data_key.get_secret_value())

    def require_identity_secret(self) -> bytes:
        if self.identity_secret is None:
            raise SystemExit("HOMEWARD_IDENTITY_SECRET is not set (hex); `homeward up` generates one.")
        return bytes.fromhex(self.identity_secret.get_secret_value())
