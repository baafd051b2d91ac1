"""Departure attestations (contract v1.1): a compact JWS (EdDSA over Ed25519) of `Claims`, signed
by a program key and verifiable offline against the program's public JWKS.

Anyone holding the public keys (`homeward attestation keys`) checks a token:

    claims = attestation.verify(token, attestation.public_key_set(jwks_document))

The JOSE work is joserfc's (keys, thumbprints, verification); this module only fixes the
algorithm, names the key by its RFC 7638 thumbprint (the JWS `kid`) and reads the payload as
`Claims`. Signing, on arrival's hot path (one token per verified case), is the exception: see
`Signer`.
"""

import base64
import json
import warnings
from datetime import date
from typing import Annotated, Any, Literal
from uuid import UUID

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey
from nacl.signing import SigningKey
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from contracts.values import CountryCode, Timestamp

ALGORITHM = "EdDSA"
"""What contract v1.1 names. RFC 9864 deprecates it in favour of the fully specified "Ed25519",
which is the same signature over Ed25519; a v2 of the topic could move to that name."""
CURVE: Literal["Ed25519"] = "Ed25519"
KEYS_MAX = 100
"""Program keys a key set may hold (the current one and those it replaced)."""

warnings.filterwarnings("ignore", message="EdDSA is deprecated via RFC 9864")


class Claims(BaseModel):
    """What an attestation says: the case, who (as the program's keyed identity hash, never a name
    or document), where to and when they left, and how their arrival was verified."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    case_id: UUID
    identity_key: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    destination_country: CountryCode
    departed_on: date
    verified_at: Timestamp
    rule: Literal["partner_office", "carrier_and_app"]


class AttestationInvalid(Exception):
    """A token that is not a valid attestation under the keys given; the message says why."""


def new_key() -> OKPKey:
    key = OKPKey.generate_key(CURVE, private=True)
    return OKPKey.import_key({**key.as_dict(private=True), "kid": key.thumbprint()})


def new_key_set_json() -> str:
    """A private key set of one new key, as JSON (what `homeward up` keeps in its secrets)."""
    return json.dumps({"keys": [new_key().as_dict(private=True)]})


def rotated(document: str) -> str:
    """The private key set with a new key after the others: it signs from now on; the old ones
    stay, so what they signed still verifies."""
    keys = _documents(document)
    if len(keys) >= KEYS_MAX:
        raise ValueError(f"a key set holds at most {KEYS_MAX} keys")
    return json.dumps({"keys": [*keys, new_key().as_dict(private=True)]})


def _documents(document: str) -> list[dict[str, Any]]:
    try:
        keys = json.loads(document)["keys"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError('an attestation key set is a JWKS: {"keys": [...]}') from error
    if not isinstance(keys, list) or not keys or not all(isinstance(key, dict) for key in keys):
        raise ValueError("an attestation key set holds at least one key")
    return keys


def _imported(document: str, *, private: bool) -> list[OKPKey]:
    keys = []
    for entry in _documents(document):
        if entry.get("kty") != "OKP" or entry.get("crv") != CURVE or not entry.get("kid"):
            raise ValueError(f"an attestation key is an {CURVE} OKP key with a kid")
        if private and "d" not in entry:
            raise ValueError("signing needs the private key set (with `d`)")
        key = OKPKey.import_key(entry if private else {name: entry[name] for name in ("kty", "crv", "x", "kid")})
        if key.kid != key.thumbprint():
            raise ValueError(f"key {key.kid!r} is not named by its thumbprint")
        keys.append(key)
    return keys


def _base64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


class Signer:
    """Signs with the newest key of a private key set.

    The compact serialisation (RFC 7515 section 7.1: header, payload and signature, each base64url
    without padding, joined by dots) is written here rather than asked of joserfc, whose
    `serialize_compact` looks up the algorithm, checks the key and encodes the same header again
    on every call; the signature is libsodium's (PyNaCl). Ed25519 is deterministic, so the token is
    byte for byte the one joserfc makes (tests/unit/test_contract_examples.py checks it), in 30 µs
    here instead of 68."""

    def __init__(self, document: str) -> None:
        self._key = _imported(document, private=True)[-1]
        self._signing_key = SigningKey(base64.urlsafe_b64decode(f"{self._key.as_dict(private=True)['d']}=="))
        header = json.dumps({"alg": ALGORITHM, "kid": self.key_id}, separators=(",", ":")).encode()
        self._protected = _base64url(header) + b"."

    @property
    def key_id(self) -> str:
        return str(self._key.kid)

    def sign(self, claims: Claims) -> str:
        signing_input = self._protected + _base64url(claims.model_dump_json().encode())
        signature = self._signing_key.sign(signing_input).signature
        return (signing_input + b"." + _base64url(signature)).decode("ascii")


def public_jwks(document: str) -> dict[str, Any]:
    """The public half of a key set, as a JWKS document (no private part ever leaves)."""
    return {"keys": [key.as_dict(private=False) | {"kid": key.kid, "alg": ALGORITHM, "use": "sig"}
                     for key in _imported(document, private=False)]}  # fmt: skip


def public_key_set(document: str) -> KeySet:
    return KeySet(list(_imported(document, private=False)))


def key_id_of(token: str) -> str | None:
    """The `kid` a token names, read without checking anything."""
    try:
        header = jws.extract_compact(token.encode()).headers()
    except (JoseError, ValueError):
        return None
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


def verify(token: str, keys: KeySet) -> Claims:
    """The claims of a token signed by one of `keys`, or AttestationInvalid saying why not."""
    kid = key_id_of(token.strip())
    if kid is None:
        raise AttestationInvalid("not a compact JWS naming its key (kid)")
    key = next((candidate for candidate in keys.keys if candidate.kid == kid), None)
    if key is None:
        raise AttestationInvalid(f"signed by key {kid!r}, which is not among the program's keys")
    try:
        signed = jws.deserialize_compact(token.strip(), key, algorithms=[ALGORITHM])
    except (JoseError, ValueError) as error:
        raise AttestationInvalid(f"the signature does not verify ({type(error).__name__})") from error
    if signed.headers().get("alg") != ALGORITHM:
        raise AttestationInvalid(f"not signed with {ALGORITHM}")
    try:
        return Claims.model_validate_json(signed.payload)
    except ValidationError as error:
        raise AttestationInvalid("the payload is not an attestation's claims") from error
