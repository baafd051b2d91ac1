"""Ledger requests that no ledger state could accept are refused before touching the database."""

import dataclasses
from decimal import Decimal
from uuid import UUID

import pytest

from services.disbursement.ledger import INVALID_AMOUNT, SAME_ACCOUNT, ChainKey, Transfer, first_difference, malformed

CHAIN = ChainKey(b"k" * 32)


def transfer(amount: str = "1000.00", debit: str = "program_budget", credit: str = "stipends_paid") -> Transfer:
    return Transfer("t-1", "pending", debit, credit, Decimal(amount), "USD")


@pytest.mark.parametrize("amount", ["1.005", "0.00", "-5.00", "NaN", "Infinity"])
def test_amounts_that_are_not_positive_whole_cents_are_refused(amount: str) -> None:
    assert malformed(transfer(amount)) == INVALID_AMOUNT


@pytest.mark.parametrize("amount", ["0.01", "1000.00", "1000", "12.5"])
def test_positive_whole_cents_are_accepted(amount: str) -> None:
    assert malformed(transfer(amount)) is None


def test_one_account_on_both_sides_is_refused() -> None:
    assert malformed(transfer(debit="program_budget", credit="program_budget")) == SAME_ACCOUNT


def test_the_first_changed_field_is_named() -> None:
    original = transfer()
    assert first_difference(original, original.fields()) is None
    assert first_difference(transfer("999.99"), original.fields()) == "amount"
    assert first_difference(transfer(credit="program_funding"), original.fields()) == "credit_account"


def test_the_chain_hash_covers_the_previous_hash_the_position_and_every_field() -> None:
    chain_hash = CHAIN.seal
    base = chain_hash("genesis", 1, transfer())
    assert base == chain_hash("genesis", 1, transfer())
    assert len({base, chain_hash("other", 1, transfer()), chain_hash("genesis", 2, transfer()),
                chain_hash("genesis", 1, transfer("999.99"))}) == 4  # fmt: skip


def test_the_chain_hash_is_keyed_and_names_its_key() -> None:
    other = ChainKey(b"o" * 32)
    mine, theirs = CHAIN.seal("genesis", 1, transfer()), other.seal("genesis", 1, transfer())
    assert mine != theirs
    assert mine.partition(":")[0] == CHAIN.key_id != other.key_id
    assert CHAIN.secret.hex() not in repr(CHAIN)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        ChainKey(b"short")


def test_the_hashed_text_keeps_every_field_in_declaration_order() -> None:
    """Recorded hashes depend on this order (`ledger verify` recomputes them): it must not drift."""
    uuid = UUID("00000000-0000-0000-0000-000000000001")
    full = Transfer("t-2", "post_pending", "program_budget", "stipends_paid", Decimal("12.5"), "USD", "t-1", uuid)
    assert list(full.fields()) == [field.name for field in dataclasses.fields(Transfer)]
    assert list(full.fields().values()) == ["t-2", "post_pending", "program_budget", "stipends_paid", "12.50", "USD",
                                            "t-1", str(uuid)]  # fmt: skip
    assert list(transfer().fields().values())[-2:] == ["", ""]
    assert list(full.row()) == list(full.fields())
