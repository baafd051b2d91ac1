"""What only arrival reads: the evidence window, how often it is swept, and whether evidence must
be signed. Arrival holds no key: it checks signatures with the public keys in its own schema."""

from typing import Literal

from pydantic import Field

from services.runtime.settings import ServiceSettings


class ArrivalSettings(ServiceSettings):
    arrival_window_seconds: int = Field(
        default=30 * 24 * 3600, ge=0, description="Evidence window after scheduled arrival"
    )
    arrival_sweep_interval_ms: int = Field(default=10_000, ge=10)
    evidence_auth: Literal["required", "off"] = Field(
        default="required",
        description="Contract v1.1 signed evidence: `required` refuses evidence no registered signer signed; "
        "`off` counts unsigned evidence as v1 did, for a transition only",
    )
