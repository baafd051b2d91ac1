"""What only registration reads: the key that turns documents into identity keys, and the data key."""

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from services.runtime.settings import HMAC_KEY_BYTES_MIN, SealedData, ServiceSettings, hex_key, secret_files


class RegistrationSettings(ServiceSettings, SealedData):
    identity_secret: SecretStr | None = Field(
        default=None, description="Hex key for identity_key HMAC-SHA256 (registration only), at least 32 bytes"
    )
    identity_secret_file: Path | None = Field(
        default=None, description="A file holding HOMEWARD_IDENTITY_SECRET, instead of it"
    )

    _identity_secret_from_file = secret_files("identity_secret")

    @field_validator("identity_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        hex_key(value, "HOMEWARD_IDENTITY_SECRET", at_least=HMAC_KEY_BYTES_MIN)
        return value

    def require_identity_secret(self) -> bytes:
        if self.identity_secret is None:
            raise SystemExit("HOMEWARD_IDENTITY_SECRET is not set (hex); `homeward up` generates one.")
        return bytes.fromhex(self.identity_secret.get_secret_value())
