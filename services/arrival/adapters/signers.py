"""The evidence signer registry (contract v1.1), as `homeward signers` and the worlds manage it.

One function per command, each over one connection to arrival's schema; the checks that refuse
an entry come before any write, and the database's constraints hold the rest (one key per id,
one id per key, office binding only for partner offices).
"""

from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

from contracts import signing
from services.runtime.db import Connection, fetch_all, load_queries

SQL = Path(__file__).parent / "sql" / "signers.sql"
OFFICE_CODE_CHARS_MAX = 100


class SignerRefused(ValueError):
    """An entry the registry will not take, with what to do instead."""


@dataclass(frozen=True)
class SignerEntry:
    signer_id: str
    source: str
    fingerprint: str
    """SHA-256 of the raw public key, hex, cut to 16 characters: enough to tell keys apart."""
    office_code: str | None
    added_at: datetime
    revoked_at: datetime | None


def queries() -> Any:
    return load_queries(SQL)


def fingerprint(public_key: bytes) -> str:
    return sha256(public_key).hexdigest()[:16]


def _entry(row: Any) -> SignerEntry:
    return SignerEntry(
        signer_id=row["signer_id"],
        source=row["source"],
        fingerprint=fingerprint(row["public_key"]),
        office_code=row["office_code"],
        added_at=row["added_at"],
        revoked_at=row["revoked_at"],
    )


async def add(
    connection: Connection, signer_id: str, source: str, public_key_pem: bytes, office_code: str | None = None
) -> tuple[SignerEntry, bool]:
    """Registers a signer; returns its entry and whether it is new. The same id with the same key
    (and source and office) again changes nothing; anything else under a known id is refused."""
    if not 1 <= len(signer_id) <= signing.SIGNER_ID_CHARS_MAX or not signer_id.isprintable():
        raise SignerRefused(f"a signer id is 1 to {signing.SIGNER_ID_CHARS_MAX} printable characters")
    if source not in signing.SIGNER_SOURCES:
        raise SignerRefused(f"source must be one of {', '.join(signing.SIGNER_SOURCES)}, not {source!r}")
    if office_code is not None and source != "partner_office":
        raise SignerRefused("only a partner_office signer can be bound to an office code")
    if office_code is not None and not 1 <= len(office_code) <= OFFICE_CODE_CHARS_MAX:
        raise SignerRefused(f"an office code is 1 to {OFFICE_CODE_CHARS_MAX} characters")
    try:
        public_key = signing.public_key_from_pem(public_key_pem)
    except ValueError as error:
        raise SignerRefused(f"the public key file: {error}") from error
    registry = queries()
    async with connection.transaction():
        holder = await registry.signer_with_key(connection, public_key=public_key)
        if holder is not None and holder["signer_id"] != signer_id:
            raise SignerRefused(
                f"this key is already registered as {holder['signer_id']!r}: each signer needs a key of its own"
            )
        row = await registry.add_signer(
            connection, signer_id=signer_id, source=source, public_key=public_key, office_code=office_code
        )
    if row is None:
        raise SignerRefused("another command registered this id at the same moment; run the command again")
    if not row["added"]:
        if row["public_key"] != public_key:
            raise SignerRefused(
                f"{signer_id!r} is registered with another key ({fingerprint(row['public_key'])}); "
                "register the new key under a new id, then revoke the old one"
            )
        if (row["source"], row["office_code"]) != (source, office_code):
            raise SignerRefused(
                f"{signer_id!r} is registered for source {row['source']} office {row['office_code']}; "
                "a signer's scope cannot change: register a new id"
            )
    return _entry(row), bool(row["added"])


async def revoke(connection: Connection, signer_id: str, *, at: datetime | None = None) -> datetime:
    """Revokes a signer from `at` (default: now, by the database's clock): evidence received from
    then on no longer counts.
    Returns the revocation time in force (the first one, if it was revoked before)."""
    row = await queries().revoke_signer(connection, signer_id=signer_id, revoked_at=at)
    if row is None:
        raise SignerRefused(f"no signer {signer_id!r}; `homeward signers list` shows the registered ones")
    revoked_at: datetime = row["revoked_at"]
    return revoked_at


async def listed(connection: Connection) -> list[SignerEntry]:
    return [_entry(row) for row in await fetch_all(queries().list_signers(connection))]
