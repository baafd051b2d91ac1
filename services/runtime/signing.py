"""Signed webhooks: HMAC-SHA256 over the timestamp and the raw body, as the payout provider sends them.

The sender puts the unix time in `X-Homeward-Timestamp` and `v1=<hex>` in `X-Homeward-Signature`.
Signing the timestamp with the body, and refusing old timestamps, stops a captured callback from
being replayed later; comparing in constant time stops the signature being guessed byte by byte.
"""

import hashlib
import hmac

SIGNATURE_VERSION = "v1"
TIMESTAMP_HEADER = "X-Homeward-Timestamp"
SIGNATURE_HEADER = "X-Homeward-Signature"
# A unix time in seconds has 10 digits until the year 2286; anything much longer is not a timestamp.
TIMESTAMP_DIGITS_MAX = 12
# A header may carry several signatures (while a secret is rotated); more than this is refused.
SIGNATURES_PER_HEADER_MAX = 4


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `X-Homeward-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify(
    secret: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    *,
    now: float,
    tolerance_seconds: int = 300,
) -> str | None:
    """None when the signature is valid and fresh, otherwise the reason it is refused:
    `missing_signature`, `malformed_timestamp`, `stale_timestamp` or `bad_signature`.

    A timestamp exactly `tolerance_seconds` away from `now` is still accepted. The signature header
    may list several comma-separated `v1=<hex>` values; any one of them matching is enough."""
    if not timestamp_header or not signature_header:
        return "missing_signature"
    if not (timestamp_header.isascii() and timestamp_header.isdigit()) or len(timestamp_header) > TIMESTAMP_DIGITS_MAX:
        return "malformed_timestamp"
    timestamp = int(timestamp_header)
    if abs(now - timestamp) > tolerance_seconds:
        return "stale_timestamp"
    expected = sign(secret, timestamp, body)
    candidates = [candidate.strip() for candidate in signature_header.split(",")][:SIGNATURES_PER_HEADER_MAX]
    if any(hmac.compare_digest(expected.encode(), candidate.encode()) for candidate in candidates):
        return None
    return "bad_signature"
