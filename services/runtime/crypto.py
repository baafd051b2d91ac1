"""Identity keys (HMAC-SHA256) and sealed personal data (AES-256-GCM, `cryptography`).

A sealed blob names the key that sealed it and is bound to its case id as associated data, so a
blob copied onto another case does not open; a retired key still opens what it sealed.
"""

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LEGACY_SEAL_VERSION = "v1"
"""`v1.<nonce and ciphertext>`: no key id; opened by trying the current key, then the retired ones."""
SEAL_VERSION = "v2"
"""`v2.<key id>.<nonce and ciphertext>`: the key id names the key, and is bound in the associated data."""
UNSEAL_ERRORS: tuple[type[Exception], ...] = (InvalidTag, ValueError, KeyError, TypeError)
"""What opening a damaged, foreign or tampered blob can raise."""
NONCE_BYTES = 12
KEY_ID_BYTES = 8


def key_id(key: bytes) -> str:
    """A key's id: the first 8 bytes of its SHA-256, which say which key without revealing it."""
    return hashlib.sha256(key).digest()[:KEY_ID_BYTES].hex()


@dataclass(frozen=True)
class Keyring:
    """The data key that seals now, and the retired ones that still open what they sealed
    (`homeward keys rotate` retires the current key and makes a new one)."""

    current: bytes = field(repr=False)
    retired: tuple[bytes, ...] = field(default=(), repr=False)

    @cached_property
    def _by_id(self) -> dict[str, bytes]:
        """Each key by its id, hashed once per keyring rather than on every seal and unseal."""
        return {key_id(key): key for key in (self.current, *self.retired)}

    @cached_property
    def current_id(self) -> str:
        return key_id(self.current)

    def holds(self, wanted: str) -> bool:
        return wanted in self._by_id

    def by_id(self, wanted: str) -> bytes:
        try:
            return self._by_id[wanted]
        except KeyError:
            raise UnknownKey(wanted) from None


class UnknownKey(KeyError):
    """A value names a data key this process does not hold: a configuration to fix (a key not
    handed over, or services restarted out of order after a rotation), not a damaged value."""

    def __init__(self, key_id: str) -> None:
        super().__init__(
            f"no data key with id {key_id!r} here: give this service that key (retired keys go in "
            "HOMEWARD_DATA_KEYS_RETIRED; after a rotation, restart travel and disbursement before registration)"
        )
        self.key_id = key_id


Keys = Keyring | bytes
"""A keyring, or one key alone (a keyring without retired keys)."""


def _ring(keys: Keys) -> Keyring:
    return keys if isinstance(keys, Keyring) else Keyring(keys)


def identity_key(secret: bytes, normalized_document: str) -> str:
    return hmac.new(secret, normalized_document.encode(), hashlib.sha256).hexdigest()


def seal(keys: Keys, plaintext: dict[str, Any], *, bound_to: str) -> str:
    return seal_bytes(keys, json.dumps(plaintext, separators=(",", ":"), sort_keys=True).encode(), bound_to=bound_to)


def unseal(keys: Keys, sealed: str, *, bound_to: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(unseal_bytes(keys, sealed, bound_to=bound_to))
    return result


def encrypt(key: bytes, body: bytes, aad: str) -> str:
    """AES-256-GCM under a fresh nonce: the URL-safe base64 of nonce and ciphertext."""
    nonce = os.urandom(NONCE_BYTES)
    return base64.urlsafe_b64encode(nonce + AESGCM(key).encrypt(nonce, body, aad.encode())).decode()


def decrypt(key: bytes, encoded: str, aad: str) -> bytes:
    """What `encrypt` sealed; raises one of `UNSEAL_ERRORS` if it does not open."""
    raw = base64.urlsafe_b64decode(encoded)
    return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad.encode())


def seal_bytes(keys: Keys, body: bytes, *, bound_to: str) -> str:
    """`v2.`, the current key's id, `.` and the URL-safe base64 of nonce and ciphertext; the
    associated data binds `bound_to` (a case id) and the key id."""
    ring = _ring(keys)
    return f"{SEAL_VERSION}.{ring.current_id}.{encrypt(ring.current, body, f'{bound_to}|{ring.current_id}')}"


def unseal_bytes(keys: Keys, sealed: str, *, bound_to: str) -> bytes:
    ring = _ring(keys)
    version, _, rest = sealed.partition(".")
    if version == SEAL_VERSION:
        sealed_with, _, encoded = rest.partition(".")
        return decrypt(ring.by_id(sealed_with), encoded, f"{bound_to}|{sealed_with}")
    if version == LEGACY_SEAL_VERSION:
        raw = base64.urlsafe_b64decode(rest)
        for key in (ring.current, *ring.retired):
            try:
                return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], bound_to.encode())
            except InvalidTag:
                continue
        raise InvalidTag
    raise ValueError(f"unknown seal version {version!r}")


def new_key() -> bytes:
    """A fresh 256-bit key."""
    return os.urandom(32)


def new_key_hex() -> str:
    return new_key().hex()
