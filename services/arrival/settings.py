"""What only arrival reads: the evidence window, how often it is swept, whether evidence must be
signed, how long a withdrawal waits for its case, and the keys that sign departure attestations.
Arrival holds no data key: it checks signatures with the public keys in its own schema."""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from contracts import attestation
from services.runtime.settings import HomewardSettings, ServiceSettings, secret_files


class AttestationKeys(HomewardSettings):
    """The program's attestation keys: arrival signs with the newest; `homeward attestation keys`
    publishes their public half."""

    attestation_keys: SecretStr | None = Field(
        default=None,
        description="Private JWKS of the Ed25519 keys that sign departure attestations (the last one signs; "
        "`homeward up` generates it, `homeward attestation keys rotate` adds one)",
    )
    attestation_keys_file: Path | None = Field(
        default=None, description="A file holding HOMEWARD_ATTESTATION_KEYS, instead of it"
    )

    _attestation_keys_from_file = secret_files("attestation_keys")

    @field_validator("attestation_keys")
    @classmethod
    def _a_key_set(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                attestation.Signer(value.get_secret_value())
            except ValueError as error:
                raise ValueError(f"HOMEWARD_ATTESTATION_KEYS: {error}") from None
        return value

    def require_attestation_keys(self) -> attestation.Signer:
        if self.attestation_keys is None:
            raise SystemExit(
                "HOMEWARD_ATTESTATION_KEYS is not set (a private JWKS of Ed25519 keys); `homeward up` generates it."
            )
        return attestation.Signer(self.attestation_keys.get_secret_value())


class ArrivalSettings(ServiceSettings, AttestationKeys):
    arrival_window_seconds: int = Field(
        default=30 * 24 * 3600, ge=0, description="Evidence window after scheduled arrival"
    )
    arrival_sweep_interval_ms: int = Field(default=10_000, ge=10)
    evidence_auth: Literal["required", "off"] = Field(
        default="required",
        description="Contract v1.1 signed evidence: `required` refuses evidence no registered signer signed; "
        "`off` counts unsigned evidence as v1 did, for a transition only",
    )
    withdrawal_case_wait_seconds: int = Field(
        default=600,
        ge=0,
        description="How long a withdrawal request for a case arrival does not know waits for it (its "
        "registration.accepted may come later) before it is refused `unknown_case`",
    )
