"""What only travel reads: its provider, its booking retries, and the data key (to name the traveller)."""

from pydantic import Field, SecretStr

from services.runtime.settings import ProviderTls, SealedData, ServiceSettings


class TravelSettings(ServiceSettings, SealedData, ProviderTls):
    booking_attempts_max: int = Field(default=5, ge=1, le=50)
    booking_backoff_base_ms: int = Field(default=200, ge=1)
    booking_backoff_max_ms: int = Field(default=30_000, ge=1)
    travel_provider_url: str | None = Field(
        default=None, description="Base URL of the travel provider, e.g. http://127.0.0.1:8091"
    )
    travel_provider_token: SecretStr | None = Field(
        default=None, description="Bearer token sent with every call to the travel provider"
    )
    travel_provider_timeout_ms: int = Field(
        default=5_000, ge=1, le=600_000, description="How long travel waits for a booking answer"
    )
    travel_provider_attempts_max: int = Field(
        default=3, ge=1, le=20, description="Booking tries within one attempt before it is scheduled again"
    )
    travel_provider_backoff_initial_ms: int = Field(default=100, ge=1, description="First pause between those tries")
    travel_batch_items_max: int = Field(
        default=200, ge=1, le=500, description="Bookings per batch call to the provider (the sandbox takes at most 500)"
    )
