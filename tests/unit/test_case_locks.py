"""The advisory-lock keys a batch takes for the cases it touches (uow.case_lock_key)."""

from uuid import UUID

from services.runtime.ids import new_id
from services.runtime.settings import SERVICE_NAMES
from services.runtime.uow import case_lock_class, case_lock_key


def test_a_case_lock_key_is_the_int4_of_the_low_bits_of_its_id() -> None:
    assert case_lock_key(UUID(int=(1 << 96) | 5)) == 5
    assert case_lock_key(UUID(int=0xFFFF_FFFF)) == -1
    assert all(-(1 << 31) <= case_lock_key(new_id()) < 1 << 31 for _ in range(1000))


def test_a_subject_that_is_no_uuid_has_a_key_of_its_own() -> None:
    assert case_lock_key("topic-key") == case_lock_key("topic-key")
    assert case_lock_key("topic-key") != case_lock_key("other-key")


def test_ids_minted_in_one_millisecond_have_different_keys() -> None:
    """UUIDv7s of one moment share their high bits; the key is taken from the random low ones."""
    keys = {case_lock_key(new_id()) for _ in range(1000)}
    assert len(keys) > 990


def test_each_service_locks_its_cases_in_a_class_of_its_own() -> None:
    classes = {case_lock_class(service) for service in SERVICE_NAMES}
    assert len(classes) == len(SERVICE_NAMES)
    assert all(-(1 << 31) <= lock_class < 1 << 31 for lock_class in classes)
