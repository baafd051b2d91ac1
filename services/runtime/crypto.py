"""Identity keys (HMAC-SHA256) and sealed personal data (AES-256-GCM, `cryptography`).

A sealed blob is bound to its case id as associated data, so a blob copied onto
another case does not open.
"""

import base64
import hashlib
import hmac
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEAL_VERSION = "v1"
UNSEAL_ERRORS: tuple[type[Exception], ...] = (InvalidTag, ValueError, KeyError, TypeError)
"""What opening a damaged, foreign or tampered blob can raise."""
NONCE_BYTES = 12


def identity_key(secret: bytes, normalized_document: str) -> str:
    return hmac.new(secret, normalized_document.encode(), hashlib.sha256).hexdigest()


def seal(key: bytes, plaintext: dict[str, Any], *, bound_to: str) -> str:
    return seal_bytes(key, json.dumps(plaintext, separators=(",", ":"), sort_keys=True).encode(), bound_to=bound_to)


def unseal(key: bytes, sealed: str, *, bound_to: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(unseal_bytes(key, sealed, bound_to=bound_to))
    return result


def seal_bytes(key: bytes, body: bytes, *, bound_to: str) -> str:
    """`v1.` and the URL-safe base64 of nonce and ciphertext; `bound_to` is the associated data."""
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(key).encrypt(nonce, body, bound_to.encode())
    return f"{SEAL_VERSION}.{base64.urlsafe_b64encode(nonce + ciphertext).decode()}"


def unseal_bytes(key: bytes, sealed: str, *, bound_to: str) -> bytes:
    version, _, encoded = sealed.partition(".")
    if version != SEAL_VERSION:
        raise ValueError(f"unknown seal version {version!r}")
    raw = base64.urlsafe_b64decode(encoded)
    return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], bound_to.encode())


def new_key() -> bytes:
    """A fresh 256-bit key."""
    return os.urandom(32)


def new_key_hex() -> str:
    return new_key().hex()
