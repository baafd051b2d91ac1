"""What only disbursement reads: the program's money, the payout provider and its signed callbacks."""

from decimal import Decimal

from pydantic import Field

from services.runtime.settings import (
    HomewardSettings,
    PayoutCallbacks,
    PayoutProviderAccess,
    ProviderTls,
    SealedData,
    ServiceSettings,
)


class ProgramCurrency(HomewardSettings):
    """The program's currency; `homeward ledger fund` reads it too."""

    program_currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")


class ProgramSettings(ProgramCurrency):
    """The program's money."""

    program_amount: Decimal = Field(default=Decimal("1000.00"), description="Stipend per verified arrival")
    program_budget: Decimal = Field(
        default=Decimal("10000000.00"), description="Budget funded once when the ledger is created"
    )


class DisbursementSettings(
    ServiceSettings, SealedData, PayoutCallbacks, PayoutProviderAccess, ProviderTls, ProgramSettings
):
    payout_provider_url: str | None = Field(
        default=None, description="Base URL of the payout provider, e.g. http://127.0.0.1:8090"
    )
    payout_timeout_ms: int = Field(default=2_000, ge=1, description="How long disbursement waits for a payout answer")
    payout_attempts_max: int = Field(default=4, ge=1, le=20, description="Payout tries per pass before leaving it")
    payout_backoff_initial_ms: int = Field(default=100, ge=1, description="First pause between payout tries")
    payout_batch_items_max: int = Field(
        default=200, ge=1, le=500, description="Stipends per payout batch call (the provider takes at most 500)"
    )
    callback_tolerance_seconds: int = Field(default=300, ge=1, description="Oldest signed callback accepted")
    callback_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of /callbacks/payouts, apart from /health, /ready and /metrics (up and docker-compose "
        "set one); 0 serves the callbacks beside them on HOMEWARD_HTTP_PORT",
    )
