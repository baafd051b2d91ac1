"""Envelope encryption of a case's personal data: a key per case and reader, wrapped by the
reader's program key, so that each reader opens only its own part and erasing a case is
destroying its keys.

Registration seals an accepted case's `sealed` (opaque in the contract) as one part per purpose:

    v3~<purpose>.<program key id>.<wrapped case key>.<ciphertext>~<purpose>....

- `traveler` (name, date of birth, document): for travel, under travel's program key;
- `payout` (name, payout instrument): for disbursement, under disbursement's.

A part's case key is 32 random bytes, wrapped with AES-256-GCM under the program key, the
associated data binding case id, program key id and purpose; the ciphertext is the part's
contents under the case key (AES-256-GCM), bound to case id and purpose. Arrival holds no
program key; registration holds the readers' current ones only to wrap.

A reader keeps its part apart (`take`): the ciphertext where it keeps the case, the wrapped
case key in its own `case_keys` table. `keys rewrap` wraps that key again under the newest
program key; erasure destroys it, and the ciphertext no longer opens anywhere.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.runtime import crypto

if TYPE_CHECKING:
    from services.runtime.uow import UnitOfWork

VERSION = "v3"
PART_SEPARATOR = "~"
TRAVELER = "traveler"
"""Travel's part: what a booking needs (name, date of birth, document)."""
PAYOUT = "payout"
"""Disbursement's part: what a payout needs (name, instrument)."""
PURPOSE_OF = {"travel": TRAVELER, "disbursement": PAYOUT}
"""Which part each reader opens."""
ERASED = "erased"
"""What stands where sealed data was once a case is erased."""


def _wrap_aad(case_id: str, key_id: str, purpose: str) -> str:
    return f"{case_id}|{key_id}|{purpose}|case key"


def _data_aad(case_id: str, purpose: str) -> str:
    return f"{case_id}|{purpose}"


def wrap(program: crypto.Keyring, case_key: bytes, *, case_id: str, purpose: str) -> tuple[str, str]:
    """The case key wrapped under the current program key, and that key's id."""
    return program.current_id, crypto.encrypt(
        program.current, case_key, _wrap_aad(case_id, program.current_id, purpose)
    )


def unwrap(program: crypto.Keyring, key_id: str, wrapped: str, *, case_id: str, purpose: str) -> bytes:
    return crypto.decrypt(program.by_id(key_id), wrapped, _wrap_aad(case_id, key_id, purpose))


def seal_case(programs: Mapping[str, crypto.Keyring], contents: Mapping[str, dict[str, Any]], *, case_id: str) -> str:
    """`sealed` for an accepted case: each purpose's contents under a fresh case key, wrapped by
    that purpose's program key (`programs` by purpose)."""
    parts = [VERSION]
    for purpose, plaintext in contents.items():
        case_key = crypto.new_key()
        key_id, wrapped = wrap(programs[purpose], case_key, case_id=case_id, purpose=purpose)
        body = json.dumps(plaintext, separators=(",", ":"), sort_keys=True).encode()
        ciphertext = crypto.encrypt(case_key, body, _data_aad(case_id, purpose))
        parts.append(f"{purpose}.{key_id}.{wrapped}.{ciphertext}")
    return PART_SEPARATOR.join(parts)


@dataclass(frozen=True)
class Taken:
    """A reader's part of `sealed`, as it keeps it: the ciphertext with the case, the wrapped key
    in `case_keys` (None for data sealed before envelopes, which the program keyring opens)."""

    ciphertext: str
    key_id: str | None = None
    wrapped: str | None = None


def take(sealed: str, purpose: str) -> Taken:
    """The part of `sealed` for `purpose`; anything else (an older seal, or a value without this
    part) is kept as it came, and fails when opened."""
    version, *parts = sealed.split(PART_SEPARATOR)
    if version != VERSION:
        return Taken(sealed)
    for part in parts:
        named, key_id, wrapped, ciphertext = [*part.split("."), "", "", ""][:4]
        if named == purpose:
            return Taken(f"{VERSION}.{ciphertext}", key_id, wrapped)
    return Taken(sealed)


def open_taken(program: crypto.Keyring, taken: Taken, *, case_id: str, purpose: str) -> dict[str, Any]:
    """A reader's part, opened: its case key unwrapped, or, for data sealed before envelopes, the
    blob opened by the keyring. Raises one of `crypto.UNSEAL_ERRORS` when it cannot be opened
    (another program key, another case, a destroyed case key)."""
    version, _, ciphertext = taken.ciphertext.partition(".")
    if version != VERSION:
        return crypto.unseal(program, taken.ciphertext, bound_to=case_id)
    if taken.key_id is None or taken.wrapped is None:
        raise KeyError("this case's key is destroyed (erased) or was never received")
    case_key = unwrap(program, taken.key_id, taken.wrapped, case_id=case_id, purpose=purpose)
    result: dict[str, Any] = json.loads(crypto.decrypt(case_key, ciphertext, _data_aad(case_id, purpose)))
    return result


ROW_COLUMNS = frozenset({"case_id", "sealed", "case_key_id", "wrapped_key"})


def opened(program: crypto.Keyring, row: Any, *, purpose: str) -> dict[str, Any]:
    """A reader's part from a row of its tables: `case_id`, `sealed` (the ciphertext) and the
    `case_key_id` and `wrapped_key` of its `case_keys` row (NULL where it has none)."""
    # A query that forgot a column is a bug to see, not a case to fail as unreadable.
    missing = ROW_COLUMNS - set(row.keys())
    assert not missing, f"the row lacks {sorted(missing)}: join case_keys (see claim_due_bookings)"
    taken = Taken(row["sealed"], row["case_key_id"], row["wrapped_key"])
    return open_taken(program, taken, case_id=str(row["case_id"]), purpose=purpose)


def named_key(taken: Taken) -> str | None:
    """The id of the data key a part needs: the one wrapping its case key, or the one a value
    sealed before envelopes names (`v2.<key id>.…`); None where it names none."""
    if taken.key_id:
        return taken.key_id
    version, _, rest = taken.ciphertext.partition(".")
    return rest.partition(".")[0] if version == crypto.SEAL_VERSION else None


async def keep_case_keys(uow: "UnitOfWork", case_ids: list[Any], parts: list[Taken], program: crypto.Keyring) -> None:
    """A reader keeps the wrapped case keys of a run of accepted cases in its `case_keys`. A part
    that needs a data key this reader does not hold is refused (`crypto.UnknownKey`): the batch is
    retried, then dead-lettered, and registration's re-drive sends it again; stored, it would fail
    its booking or payment for good."""
    for part in parts:
        if (needed := named_key(part)) is not None and not program.holds(needed):
            raise crypto.UnknownKey(needed)
    kept = [(case_id, part) for case_id, part in zip(case_ids, parts, strict=True) if part.key_id and part.wrapped]
    if kept:
        await uow.runtime_queries.keep_case_keys(
            uow.connection,
            case_ids=[case_id for case_id, _ in kept],
            key_ids=[part.key_id for _, part in kept],
            wrapped=[part.wrapped for _, part in kept],
        )
