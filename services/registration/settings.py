"""What only registration reads: the key that turns documents into identity keys, its own data key
(for its dead-letter copies), and the readers' program keys it wraps each case's keys with."""

from pathlib import Path

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from services.runtime import casekeys
from services.runtime.crypto import Keyring
from services.runtime.settings import (
    AES_KEY_BYTES,
    HMAC_KEY_BYTES_MIN,
    SealedData,
    ServiceSettings,
    hex_key,
    secret_files,
)


class RegistrationSettings(ServiceSettings, SealedData):
    identity_secret: SecretStr | None = Field(
        default=None, description="Hex key for identity_key HMAC-SHA256 (registration only), at least 32 bytes"
    )
    identity_secret_file: Path | None = Field(
        default=None, description="A file holding HOMEWARD_IDENTITY_SECRET, instead of it"
    )

    travel_data_key: SecretStr | None = Field(
        default=None,
        description="Travel's current data key (hex, 32 bytes): registration wraps each case's traveler key with it",
    )
    travel_data_key_file: Path | None = Field(
        default=None, description="A file holding HOMEWARD_TRAVEL_DATA_KEY, instead of it"
    )
    disbursement_data_key: SecretStr | None = Field(
        default=None,
        description="Disbursement's current data key (hex, 32 bytes): registration wraps each case's payout key "
        "with it",
    )
    disbursement_data_key_file: Path | None = Field(
        default=None, description="A file holding HOMEWARD_DISBURSEMENT_DATA_KEY, instead of it"
    )

    _identity_secret_from_file = secret_files("identity_secret", "travel_data_key", "disbursement_data_key")

    @field_validator("travel_data_key", "disbursement_data_key")
    @classmethod
    def _reader_keys_aes_256(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        hex_key(value, f"HOMEWARD_{str(info.field_name).upper()}", exactly=AES_KEY_BYTES)
        return value

    @field_validator("identity_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        hex_key(value, "HOMEWARD_IDENTITY_SECRET", at_least=HMAC_KEY_BYTES_MIN)
        return value

    def require_identity_secret(self) -> bytes:
        if self.identity_secret is None:
            raise SystemExit("HOMEWARD_IDENTITY_SECRET is not set (hex); `homeward up` generates one.")
        return bytes.fromhex(self.identity_secret.get_secret_value())

    def require_reader_keys(self) -> dict[str, Keyring]:
        """The readers' current program keys, by the purpose of the part each one opens."""
        keys = {casekeys.TRAVELER: self.travel_data_key, casekeys.PAYOUT: self.disbursement_data_key}
        missing = [name for name, key in zip(READER_KEY_VARIABLES, keys.values(), strict=True) if key is None]
        if missing:
            raise SystemExit(f"{' and '.join(missing)} not set (64 hex characters each); `homeward up` generates them.")
        values = [key.get_secret_value().lower() for key in keys.values() if key]
        if self.data_key is not None:
            values.append(self.data_key.get_secret_value().lower())
        if len(set(values)) < len(values):
            # One key for two holders would let each open the other's part.
            raise SystemExit(
                "HOMEWARD_TRAVEL_DATA_KEY, HOMEWARD_DISBURSEMENT_DATA_KEY and registration's HOMEWARD_DATA_KEY "
                "must differ: each holder has a key of its own"
            )
        return {purpose: Keyring(bytes.fromhex(key.get_secret_value())) for purpose, key in keys.items() if key}


READER_KEY_VARIABLES = ("HOMEWARD_TRAVEL_DATA_KEY", "HOMEWARD_DISBURSEMENT_DATA_KEY")
