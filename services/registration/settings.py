"""What only registration reads: the key that turns documents into identity keys, and the data key."""

from pydantic import Field, SecretStr

from services.runtime.settings import SealedData, ServiceSettings


class RegistrationSettings(ServiceSettings, SealedData):
    identity_secret: SecretStr | None = Field(
        default=None, description="Hex key for identity_key HMAC-SHA256 (registration only)"
    )

    def require_identity_secret(self) -> bytes:
        if self.identity_secret is None:
            raise SystemExit("HOMEWARD_IDENTITY_SECRET is not set (hex); `homeward up` generates one.")
        return bytes.fromhex(self.identity_secret.get_secret_value())
