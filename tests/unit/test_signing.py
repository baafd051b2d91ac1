"""Signed callbacks: a valid signature passes, and each way of being wrong is refused with its reason."""

import pytest

from services.runtime.signing import sign, verify

SECRET = b"payout-callback-secret"
BODY = b'{"id":"7c9e","type":"payout.settled","key":"k-1","status":"paid"}'
NOW = 1_750_000_000
TOLERANCE_SECONDS = 300


def _verify(timestamp: str | None, signature: str | None, body: bytes = BODY, *, now: float = NOW) -> str | None:
    return verify(SECRET, timestamp, signature, body, now=now, tolerance_seconds=TOLERANCE_SECONDS)


def test_a_fresh_signature_over_the_body_is_valid() -> None:
    signature = sign(SECRET, NOW, BODY)
    assert signature.startswith("v1=")
    assert len(signature) == len("v1=") + 64
    assert _verify(str(NOW), signature) is None


def test_one_matching_signature_among_several_is_enough() -> None:
    """While a secret is rotated the sender may list a signature under each key."""
    other = sign(b"old-secret", NOW, BODY)
    assert _verify(str(NOW), f"{other}, {sign(SECRET, NOW, BODY)}") is None


@pytest.mark.parametrize(("timestamp", "signature"), [(None, "v1=00"), (str(NOW), None), (None, None), ("", "v1=00")])
def test_a_missing_header_is_refused(timestamp: str | None, signature: str | None) -> None:
    assert _verify(timestamp, signature) == "missing_signature"


# Full-width digits pass str.isdigit() and int(), but are not what a sender writes.
FULL_WIDTH_DIGITS = "\uff11\uff12\uff13"


@pytest.mark.parametrize(
    "timestamp", ["abc", "-1", "+1750000000", "1750000000.5", " 1750000000", "1" * 13, FULL_WIDTH_DIGITS]
)
def test_a_timestamp_that_is_not_unix_seconds_is_refused(timestamp: str) -> None:
    assert _verify(timestamp, sign(SECRET, NOW, BODY)) == "malformed_timestamp"


@pytest.mark.parametrize("offset", [TOLERANCE_SECONDS + 1, -(TOLERANCE_SECONDS + 1), 86_400])
def test_a_timestamp_outside_the_tolerance_is_stale(offset: int) -> None:
    """A captured callback replayed later is refused even though its signature is genuine."""
    timestamp = NOW + offset
    assert _verify(str(timestamp), sign(SECRET, timestamp, BODY)) == "stale_timestamp"


@pytest.mark.parametrize("offset", [TOLERANCE_SECONDS, -TOLERANCE_SECONDS, 0])
def test_a_timestamp_exactly_at_the_tolerance_is_accepted(offset: int) -> None:
    timestamp = NOW + offset
    assert _verify(str(timestamp), sign(SECRET, timestamp, BODY)) is None


def test_a_changed_body_is_refused() -> None:
    signature = sign(SECRET, NOW, BODY)
    assert _verify(str(NOW), signature, BODY.replace(b"paid", b"returned")) == "bad_signature"


def test_a_signature_with_another_secret_is_refused() -> None:
    assert _verify(str(NOW), sign(b"someone-else", NOW, BODY)) == "bad_signature"


def test_a_signature_moved_to_another_timestamp_is_refused() -> None:
    """The timestamp is signed too, so it cannot be refreshed to get past the tolerance."""
    assert _verify(str(NOW + 1), sign(SECRET, NOW, BODY)) == "bad_signature"


@pytest.mark.parametrize("signature", ["v1=", "v1=zz", "deadbeef", "v0=" + "0" * 64, "v1=" + "0" * 64])
def test_a_malformed_or_wrong_signature_is_refused(signature: str) -> None:
    assert _verify(str(NOW), signature) == "bad_signature"
