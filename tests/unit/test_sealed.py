"""Sealed data names the key that sealed it: a rotation leaves what an old key sealed readable,
a blob opens only for its case and its key, and what was sealed before key ids still opens. A
case's envelope gives each reader its own part only, under a case key its program key wraps."""

import base64
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.devstack.running import DATA_KEYS
from services.devstack.running import RETIRED_DATA_KEYS as RETIRED
from services.ops.keys import rotated
from services.runtime import casekeys, crypto
from services.runtime.crypto import Keyring, key_id

OLD, NEW = b"o" * 32, b"n" * 32
CASE = "7d1f2a8e-0000-4000-8000-000000000001"


def test_a_sealed_value_names_its_key_and_opens_after_a_rotation() -> None:
    sealed = crypto.seal(Keyring(OLD), {"name": "A B"}, bound_to=CASE)
    assert sealed.startswith(f"v2.{key_id(OLD)}.")
    rotated_ring = Keyring(NEW, (OLD,))
    assert crypto.unseal(rotated_ring, sealed, bound_to=CASE) == {"name": "A B"}
    assert crypto.seal(rotated_ring, {"name": "A B"}, bound_to=CASE).startswith(f"v2.{key_id(NEW)}.")


def test_a_value_opens_only_for_its_case_and_with_its_key() -> None:
    sealed = crypto.seal(Keyring(OLD), {"name": "A B"}, bound_to=CASE)
    with pytest.raises(crypto.UNSEAL_ERRORS):
        crypto.unseal(Keyring(OLD), sealed, bound_to="another-case")
    with pytest.raises(crypto.UNSEAL_ERRORS, match="no data key with id"):
        crypto.unseal(Keyring(NEW), sealed, bound_to=CASE)
    # The key id is bound too: the same bytes under another id's name do not open.
    forged = sealed.replace(key_id(OLD), key_id(NEW), 1)
    with pytest.raises(crypto.UNSEAL_ERRORS):
        crypto.unseal(Keyring(NEW, (OLD,)), forged, bound_to=CASE)


def test_what_was_sealed_before_key_ids_still_opens_with_a_retired_key() -> None:
    nonce = os.urandom(crypto.NONCE_BYTES)
    legacy = "v1." + base64.urlsafe_b64encode(nonce + AESGCM(OLD).encrypt(nonce, b'{"a":1}', CASE.encode())).decode()
    assert crypto.unseal(Keyring(NEW, (OLD,)), legacy, bound_to=CASE) == {"a": 1}
    with pytest.raises(crypto.UNSEAL_ERRORS):
        crypto.unseal(Keyring(NEW), legacy, bound_to=CASE)


def test_a_rotation_retires_every_holders_current_key_first_and_keeps_the_others() -> None:
    before = {
        "HOMEWARD_DATA_KEY": "aa" * 32, RETIRED: "bb" * 32, "HOMEWARD_LEDGER_KEY": "cc" * 32,
        "HOMEWARD_TRAVEL_DATA_KEY": "dd" * 32, "HOMEWARD_DISBURSEMENT_DATA_KEY": "ee" * 32,
    }  # fmt: skip
    after = rotated(before)
    assert after[RETIRED] == f"{'aa' * 32},{'bb' * 32}"
    assert after["HOMEWARD_TRAVEL_DATA_KEYS_RETIRED"] == "dd" * 32
    assert after["HOMEWARD_DISBURSEMENT_DATA_KEYS_RETIRED"] == "ee" * 32
    for name in DATA_KEYS.values():
        assert len(bytes.fromhex(after[name])) == 32 and after[name] not in before.values()
    assert after["HOMEWARD_LEDGER_KEY"] == before["HOMEWARD_LEDGER_KEY"]


# Envelopes: a key per case and reader, wrapped by the reader's program key -----------------------

TRAVEL, PAYOUT = Keyring(b"t" * 32), Keyring(b"p" * 32)
READERS = {casekeys.TRAVELER: TRAVEL, casekeys.PAYOUT: PAYOUT}
CONTENTS = {casekeys.TRAVELER: {"given_name": "Ana", "document": "F1"}, casekeys.PAYOUT: {"msisdn": "+504"}}


def test_each_reader_opens_its_own_part_and_not_the_others() -> None:
    sealed = casekeys.seal_case(READERS, CONTENTS, case_id=CASE)
    assert "Ana" not in sealed and "+504" not in sealed
    for purpose, keyring in READERS.items():
        part = casekeys.take(sealed, purpose)
        assert part.key_id == keyring.current_id and part.ciphertext.startswith("v3.")
        assert casekeys.open_taken(keyring, part, case_id=CASE, purpose=purpose) == CONTENTS[purpose]
    travel_part, payout_part = casekeys.take(sealed, casekeys.TRAVELER), casekeys.take(sealed, casekeys.PAYOUT)
    with pytest.raises(crypto.UNSEAL_ERRORS):  # travel's key does not open the payout part
        casekeys.open_taken(TRAVEL, payout_part, case_id=CASE, purpose=casekeys.PAYOUT)
    with pytest.raises(crypto.UNSEAL_ERRORS):  # nor disbursement's the traveler part, even under its own id
        forged = casekeys.Taken(travel_part.ciphertext, PAYOUT.current_id, travel_part.wrapped)
        casekeys.open_taken(PAYOUT, forged, case_id=CASE, purpose=casekeys.TRAVELER)


def test_a_part_opens_only_for_its_case_its_purpose_and_its_own_ciphertext() -> None:
    sealed = casekeys.seal_case(READERS, CONTENTS, case_id=CASE)
    other = casekeys.take(casekeys.seal_case(READERS, CONTENTS, case_id=CASE), casekeys.TRAVELER)
    part = casekeys.take(sealed, casekeys.TRAVELER)
    for attempt in (
        lambda: casekeys.open_taken(TRAVEL, part, case_id="another-case", purpose=casekeys.TRAVELER),
        lambda: casekeys.open_taken(TRAVEL, part, case_id=CASE, purpose=casekeys.PAYOUT),
        # Another case key's ciphertext beside this case key: the same case, the same reader.
        lambda: casekeys.open_taken(
            TRAVEL,
            casekeys.Taken(other.ciphertext, part.key_id, part.wrapped),
            case_id=CASE,
            purpose=casekeys.TRAVELER,
        ),
    ):
        with pytest.raises(crypto.UNSEAL_ERRORS):
            attempt()


def test_a_destroyed_case_key_leaves_a_ciphertext_nobody_opens() -> None:
    part = casekeys.take(casekeys.seal_case(READERS, CONTENTS, case_id=CASE), casekeys.TRAVELER)
    with pytest.raises(crypto.UNSEAL_ERRORS, match="destroyed"):
        casekeys.open_taken(TRAVEL, casekeys.Taken(part.ciphertext, part.key_id, None), case_id=CASE,
                            purpose=casekeys.TRAVELER)  # fmt: skip


def test_a_rewrapped_case_key_opens_under_the_new_program_key_alone() -> None:
    part = casekeys.take(casekeys.seal_case(READERS, CONTENTS, case_id=CASE), casekeys.TRAVELER)
    assert part.key_id is not None and part.wrapped is not None
    rotated_ring = Keyring(b"T" * 32, (TRAVEL.current,))
    case_key = casekeys.unwrap(rotated_ring, part.key_id, part.wrapped, case_id=CASE, purpose=casekeys.TRAVELER)
    key_id_now, wrapped = casekeys.wrap(rotated_ring, case_key, case_id=CASE, purpose=casekeys.TRAVELER)
    moved = casekeys.Taken(part.ciphertext, key_id_now, wrapped)
    assert key_id_now == rotated_ring.current_id != part.key_id
    opened = casekeys.open_taken(Keyring(b"T" * 32), moved, case_id=CASE, purpose=casekeys.TRAVELER)
    assert opened == CONTENTS[casekeys.TRAVELER]


def test_what_was_sealed_before_envelopes_is_kept_as_it_came_and_still_opens() -> None:
    legacy = crypto.seal(TRAVEL, {"given_name": "Ana"}, bound_to=CASE)
    part = casekeys.take(legacy, casekeys.TRAVELER)
    assert part == casekeys.Taken(legacy)
    assert casekeys.open_taken(TRAVEL, part, case_id=CASE, purpose=casekeys.TRAVELER) == {"given_name": "Ana"}


def test_a_keyring_never_shows_its_keys() -> None:
    assert OLD.decode() not in repr(Keyring(OLD, (NEW,))) and NEW.decode() not in repr(Keyring(OLD, (NEW,)))


async def test_a_reader_refuses_a_part_wrapped_by_a_key_it_was_not_given() -> None:
    part = casekeys.take(casekeys.seal_case(READERS, CONTENTS, case_id=CASE), casekeys.TRAVELER)
    with pytest.raises(crypto.UnknownKey, match="restart travel and disbursement before registration"):
        await casekeys.keep_case_keys(None, [CASE], [part], PAYOUT)  # type: ignore[arg-type]
    legacy = casekeys.take(crypto.seal(PAYOUT, {"a": 1}, bound_to=CASE), casekeys.TRAVELER)
    with pytest.raises(crypto.UnknownKey):
        await casekeys.keep_case_keys(None, [CASE], [legacy], TRAVEL)  # type: ignore[arg-type]


def test_registration_refuses_one_key_for_two_holders(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.registration.settings import RegistrationSettings

    same = "ab" * 32
    monkeypatch.setenv("HOMEWARD_TRAVEL_DATA_KEY", same)
    monkeypatch.setenv("HOMEWARD_DISBURSEMENT_DATA_KEY", same)
    with pytest.raises(SystemExit, match="must differ"):
        RegistrationSettings().require_reader_keys()
    monkeypatch.setenv("HOMEWARD_DISBURSEMENT_DATA_KEY", "cd" * 32)
    monkeypatch.setenv("HOMEWARD_DATA_KEY", same)
    with pytest.raises(SystemExit, match="must differ"):
        RegistrationSettings().require_reader_keys()
    monkeypatch.setenv("HOMEWARD_DATA_KEY", "ef" * 32)
    assert set(RegistrationSettings().require_reader_keys()) == {casekeys.TRAVELER, casekeys.PAYOUT}
