"""What only disbursement reads: the program's money, the payout provider and its signed callbacks."""

from decimal import Decimal
from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from services.runtime.settings import (
    HMAC_KEY_BYTES_MIN,
    HomewardSettings,
    PayoutCallbacks,
    PayoutProviderAccess,
    ProviderTls,
    SealedData,
    ServiceSettings,
    hex_key,
    secret_files,
)


class ProgramCurrency(HomewardSettings):
    """The program's currency; `homeward ledger fund` reads it too."""

    program_currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")


class LedgerKey(HomewardSettings):
    """The key of the journal's hash chain: disbursement appends with it, `homeward ledger verify` checks with it."""

    ledger_key: SecretStr | None = Field(
        default=None, description="Hex key (at least 32 bytes) of the ledger's HMAC hash chain"
    )
    ledger_key_file: Path | None = Field(default=None, description="A file holding HOMEWARD_LEDGER_KEY, instead of it")

    _ledger_key_from_file = secret_files("ledger_key")

    @field_validator("ledger_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        hex_key(value, "HOMEWARD_LEDGER_KEY", at_least=HMAC_KEY_BYTES_MIN)
        return value

    def require_ledger_key(self) -> bytes:
        if self.ledger_key is None:
            raise SystemExit(
                "HOMEWARD_LEDGER_KEY is not set (hex, at least 64 characters); `homeward up` generates one."
            )
        return bytes.fromhex(self.ledger_key.get_secret_value())


class InstrumentSecret(HomewardSettings):
    """Keys the payout instruments' fingerprints (contract v1.1 review holds): disbursement only."""

    instrument_secret: SecretStr | None = Field(
        default=None,
        description="Hex HMAC key (at least 32 bytes) of payout-instrument fingerprints: a payment to an "
        "instrument another identity was paid to is held for review (`instrument_shared`)",
    )
    instrument_secret_file: Path | None = Field(
        default=None, description="A file holding HOMEWARD_INSTRUMENT_SECRET, instead of it"
    )

    _instrument_secret_from_file = secret_files("instrument_secret")

    @field_validator("instrument_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        hex_key(value, "HOMEWARD_INSTRUMENT_SECRET", at_least=HMAC_KEY_BYTES_MIN)
        return value

    def require_instrument_secret(self) -> bytes:
        if self.instrument_secret is None:
            raise SystemExit(
                "HOMEWARD_INSTRUMENT_SECRET is not set (hex, at least 64 characters); `homeward up` generates one."
            )
        return bytes.fromhex(self.instrument_secret.get_secret_value())


class ProgramSettings(ProgramCurrency):
    """The program's money."""

    program_amount: Decimal = Field(default=Decimal("1000.00"), description="Stipend per verified arrival")
    program_budget: Decimal = Field(
        default=Decimal("10000000.00"), description="Budget funded once when the ledger is created"
    )


class DisbursementSettings(
    ServiceSettings,
    SealedData,
    LedgerKey,
    InstrumentSecret,
    PayoutCallbacks,
    PayoutProviderAccess,
    ProviderTls,
    ProgramSettings,
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
