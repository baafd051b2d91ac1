"""What the sandbox providers read. Each is its own process with its own store, so none of them
reads a service's settings, and neither holds a program secret (the payout sandbox holds only the
key that signs its callbacks)."""

from pathlib import Path

from pydantic import Field, SecretStr

from services.runtime.settings import HttpListener, PayoutCallbacks, StateDirectory


class PayoutSandboxSettings(HttpListener, PayoutCallbacks, StateDirectory):
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


class TravelSandboxSettings(HttpListener, StateDirectory):
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
    sandbox_flight_departure_delay_seconds: int = Field(default=0, ge=0)
    sandbox_flight_duration_seconds: int = Field(default=0, ge=0)

    def store(self) -> Path:
        return self.sandbox_travel_store or self.state_dir / "sandbox" / "travel.sqlite3"
