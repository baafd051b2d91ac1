"""All configuration, read only from `HOMEWARD_*` environment variables.

Every loop, retry and batch has a named bound here, units last.
"""

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
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
    relay_batch_size_max: int = Field(default=1000, ge=1, le=10_000)
    relay_poll_interval_ms: int = Field(default=20, ge=1, le=60_000)
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

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

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
