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
    nonce = os.urandom(NONCE_BYTES)
    body = json.dumps(plaintext, separators=(",", ":"), sort_keys=True).encode()
    ciphertext = AESGCM(key).encrypt(nonce, body, bound_to.encode())
    return f"{SEAL_VERSION}.{base64.urlsafe_b64encode(nonce + ciphertext).decode()}"


def unseal(key: bytes, sealed: str, *, bound_to: str) -> dict[str, Any]:
    version, _, encoded = sealed.partition(".")
    if version != SEAL_VERSION:
        raise ValueError(f"unknown seal version {version!r}")
    raw = base64.urlsafe_b64decode(encoded)
    body = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], bound_to.encode())
    result: dict[str, Any] = json.loads(body)
    return result


def new_key_hex() -> str:
    return os.urandom(32).hex()
