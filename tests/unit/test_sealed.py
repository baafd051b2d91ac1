"""Sealed data names the key that sealed it: a rotation leaves what an old key sealed readable,
a blob opens only for its case and its key, and what was sealed before key ids still opens."""

import base64
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.devstack.running import RETIRED_DATA_KEYS as RETIRED
from services.ops.keys import rotated
from services.runtime import crypto
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


def test_a_rotation_retires_the_current_key_first_and_keeps_the_others() -> None:
    before = {"HOMEWARD_DATA_KEY": "aa" * 32, RETIRED: "bb" * 32, "HOMEWARD_LEDGER_KEY": "cc" * 32}
    after = rotated(before)
    assert after[RETIRED] == f"{'aa' * 32},{'bb' * 32}"
    assert len(bytes.fromhex(after["HOMEWARD_DATA_KEY"])) == 32 and after["HOMEWARD_DATA_KEY"] not in before.values()
    assert after["HOMEWARD_LEDGER_KEY"] == before["HOMEWARD_LEDGER_KEY"]


def test_a_keyring_never_shows_its_keys() -> None:
    assert OLD.decode() not in repr(Keyring(OLD, (NEW,))) and NEW.decode() not in repr(Keyring(OLD, (NEW,)))
