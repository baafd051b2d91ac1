"""What only arrival reads: the evidence window and how often it is swept. Arrival holds no key."""

from pydantic import Field

from services.runtime.settings import ServiceSettings


class ArrivalSettings(ServiceSettings):
    arrival_window_seconds: int = Field(
        default=30 * 24 * 3600, ge=0, description="Evidence window after scheduled arrival"
    )
    arrival_sweep_interval_ms: int = Field(default=10_000, ge=10)
