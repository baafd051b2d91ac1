"""Contract v1.1 signed evidence, as pure functions: the header encoding and who may count."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import signing
from services.arrival import domain

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
VALUE = b'{"specversion":"1.0","data":{"source":"partner_office","office_code":"TGU-01"}}'
T = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def signed(**changes: object) -> domain.Signed:
    evidence = domain.Signed(
        signer_id="office-tgu",
        signature=signing.decode_signature(signing.sign(KEY, VALUE).encode()),
        value=VALUE,
        source="partner_office",
        office_code="TGU-01",
        received_at=T,
    )
    return replace(evidence, **changes)  # type: ignore[arg-type]


SIGNER = domain.Signer("office-tgu", "partner_office", PUBLIC)


def test_the_signature_header_is_unpadded_base64url_of_64_bytes() -> None:
    header = signing.sign(KEY, VALUE)
    assert len(header) == signing.SIGNATURE_CHARS and "=" not in header
    assert signing.decode_signature(header.encode()) == KEY.sign(VALUE)


@pytest.mark.parametrize(
    "header",
    [b"", b"x" * 85, b"x" * 87, b"+" * 86, b"/" * 86, b"=" * 86, b"A" * 84 + b"==", "é".encode() * 43],
    ids=["empty", "short", "long", "plus", "slash", "padding", "padded", "not-ascii"],
)
def test_anything_but_strict_base64url_is_no_signature(header: bytes) -> None:
    assert signing.decode_signature(header) is None


def test_a_signature_verifies_only_over_the_exact_bytes() -> None:
    signature = KEY.sign(VALUE)
    assert signing.verifies(PUBLIC, signature, VALUE)
    assert not signing.verifies(PUBLIC, signature, VALUE + b" ")
    assert not signing.verifies(PUBLIC, signature[:-1] + bytes([signature[-1] ^ 1]), VALUE)
    assert not signing.verifies(b"\x00" * 31, signature, VALUE)  # not a key at all


def test_genuine_evidence_counts() -> None:
    assert domain.refusal(signed(), SIGNER) is None


@pytest.mark.parametrize(
    ("evidence", "signer", "reason"),
    [
        (signed(signer_id=None), SIGNER, domain.UNSIGNED),
        (signed(signature=None), SIGNER, domain.UNSIGNED),
        (signed(signature=b""), SIGNER, domain.MALFORMED_SIGNATURE),
        (signed(), None, domain.UNKNOWN_SIGNER),
        (signed(), replace(SIGNER, source="carrier"), domain.WRONG_SOURCE),
        (signed(), replace(SIGNER, office_code="GUA-01"), domain.OTHER_OFFICE),
        (signed(value=VALUE + b" "), SIGNER, domain.BAD_SIGNATURE),
        (signed(), replace(SIGNER, public_key=bytes(32)), domain.BAD_SIGNATURE),
    ],
    ids=["no-signer", "no-signature", "malformed", "unknown", "other-source", "other-office", "changed", "other-key"],
)
def test_evidence_without_a_valid_signature_of_its_signer_is_refused(evidence, signer, reason) -> None:
    assert domain.refusal(evidence, signer) == reason


def test_a_revoked_signer_counts_for_what_was_received_before_the_revocation_only() -> None:
    revoked = replace(SIGNER, revoked_at=T)
    assert domain.refusal(signed(received_at=T - timedelta(microseconds=1)), revoked) is None
    assert domain.refusal(signed(received_at=T), revoked) == domain.REVOKED_SIGNER
    assert domain.refusal(signed(received_at=T + timedelta(days=1)), revoked) == domain.REVOKED_SIGNER


def test_an_office_bound_signer_counts_for_its_own_office() -> None:
    assert domain.refusal(signed(), replace(SIGNER, office_code="TGU-01")) is None


def test_a_public_key_is_read_from_pem_and_anything_else_is_refused_with_what_it_is() -> None:
    assert signing.public_key_from_pem(signing.public_key_pem(KEY)) == PUBLIC
    private_pem = KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="private key"):
        signing.public_key_from_pem(private_pem)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        signing.public_key_from_pem(
            other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    with pytest.raises(ValueError, match="not a PEM public key"):
        signing.public_key_from_pem(b"hello")


def test_arrivals_fast_check_agrees_with_the_contracts_reference_check() -> None:
    """Arrival verifies with libsodium, producers sign (and integrators check) with the contract's
    module over OpenSSL: the two agree on what a signature is."""
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    other_public = other.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    good = signing.decode_signature(signing.sign(KEY, VALUE).encode())
    assert good is not None
    flipped = bytes([good[0] ^ 1]) + good[1:]
    cases = [
        (PUBLIC, good, VALUE), (PUBLIC, good, VALUE + b" "), (PUBLIC, flipped, VALUE), (other_public, good, VALUE),
        (PUBLIC, good[:63], VALUE), (b"short", good, VALUE), (PUBLIC, b"\x00" * 64, VALUE),
    ]  # fmt: skip
    for public_key, signature, value in cases:
        assert domain.verifies(public_key, signature, value) == signing.verifies(public_key, signature, value)
    assert domain.verifies(PUBLIC, good, VALUE)


def test_signing_by_libsodium_makes_the_bytes_openssl_makes() -> None:
    """`sign` goes through libsodium for speed; Ed25519 is deterministic, so every signature is
    the one OpenSSL makes, and OpenSSL's verify accepts it."""
    for seed in range(5):
        key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        for value in (b"", VALUE, VALUE * 20):
            header = signing.sign(key, value)
            assert signing.decode_signature(header.encode()) == key.sign(value)
            key.public_key().verify(key.sign(value), value)
