"""What the sandbox providers read. Each is its own process with its own store, so none of them
reads a service's settings, and neither holds a program secret (the payout sandbox holds only the
key that signs its callbacks)."""

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from services.runtime.settings import HomewardSettings, HttpListener, PayoutCallbacks, StateDirectory


class SandboxTls(HomewardSettings):
    """HTTPS for a sandbox provider, and the CA whose client certificates it requires (mutual TLS)."""

    sandbox_tls_cert_file: Path | None = Field(default=None, description="PEM of the sandbox's HTTPS certificate")
    sandbox_tls_key_file: Path | None = Field(default=None, description="PEM of that certificate's private key")
    sandbox_client_ca_file: Path | None = Field(
        default=None, description="When set, the sandbox accepts only clients whose certificate this CA signed"
    )

    @model_validator(mode="after")
    def _tls_is_whole(self) -> "SandboxTls":
        if (self.sandbox_tls_cert_file is None) != (self.sandbox_tls_key_file is None):
            raise ValueError("HOMEWARD_SANDBOX_TLS_CERT_FILE and HOMEWARD_SANDBOX_TLS_KEY_FILE go together")
        if self.sandbox_client_ca_file is not None and self.sandbox_tls_cert_file is None:
            raise ValueError(
                "HOMEWARD_SANDBOX_CLIENT_CA_FILE needs HTTPS: set HOMEWARD_SANDBOX_TLS_CERT_FILE and _KEY_FILE"
            )
        return self


class PayoutSandboxSettings(HttpListener, PayoutCallbacks, StateDirectory, SandboxTls):
    """`homeward sandbox payouts`. Faults apply to POST /payouts and POST /payout-batches only."""

    sandbox_payout_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the sandbox payout provider; 0 picks a free one"
    )
    sandbox_payout_store: Path | None = Field(
        default=None,
        description="SQLite file of the sandbox payout provider (default state_dir/sandbox/payouts.sqlite3)",
    )
    sandbox_payout_token: SecretStr | None = Field(
        default=None, description="When set, the payout sandbox answers only calls that bear this token (not /health)"
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
    payout_callback_url: str | None = Field(
        default=None,
        description="Where the payout provider sends its notifications (unset: recorded, not sent); several "
        "comma-separated URLs are taken in turn, one that refuses connections is passed over",
    )

    def store(self) -> Path:
        return self.sandbox_payout_store or self.state_dir / "sandbox" / "payouts.sqlite3"


class TravelSandboxSettings(HttpListener, StateDirectory, SandboxTls):
    """`homeward sandbox travel`. Faults apply to POST /bookings only."""

    sandbox_travel_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the sandbox travel provider; 0 picks a free one"
    )
    sandbox_travel_token: SecretStr | None = Field(
        default=None, description="When set, the travel sandbox answers only calls that bear this token (not /health)"
    )
    sandbox_travel_store: Path | None = Field(
        default=None,
        description="SQLite file of the sandbox travel provider (default state_dir/sandbox/travel.sqlite3)",
    )
    sandbox_travel_failure_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of booking requests answered 503 without booking"
    )
    sandbox_flight_departure_delay_seconds: int = Field(
        default=0, ge=0, description="Flights leave this long after booking: until then a withdrawal cancels the ticket"
    )
    sandbox_flight_duration_seconds: int = Field(default=0, ge=0)

    def store(self) -> Path:
        return self.sandbox_travel_store or self.state_dir / "sandbox" / "travel.sqlite3"
