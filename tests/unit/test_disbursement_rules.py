"""Disbursement rules: one payment id per case, and distinct ledger transfers for each step of a payment."""

from uuid import uuid4

from services.disbursement.domain import (
    ACCOUNTS,
    FUNDING_ACCOUNT,
    payment_id_for,
    payout_transfer_id,
    reserve_transfer_id,
)


def test_payment_id_is_the_same_however_often_a_case_is_seen() -> None:
    case_id = uuid4()

    assert payment_id_for(case_id) == payment_id_for(case_id)
    assert payment_id_for(case_id) == payment_id_for(type(case_id)(str(case_id)))


def test_payment_ids_differ_across_cases() -> None:
    case_ids = [uuid4() for _ in range(50)]

    assert len({payment_id_for(case_id) for case_id in case_ids}) == len(case_ids)
    assert all(payment_id_for(case_id) != case_id for case_id in case_ids)


def test_reserve_and_payout_of_one_payment_are_distinct_transfers() -> None:
    payment_id = payment_id_for(uuid4())

    reserve, payout = reserve_transfer_id(payment_id), payout_transfer_id(payment_id)

    assert reserve != payout
    assert str(payment_id) in reserve and str(payment_id) in payout
    assert reserve_transfer_id(payment_id) == reserve
    assert payout_transfer_id(payment_id) == payout


def test_transfers_of_different_payments_never_collide() -> None:
    payments = [payment_id_for(uuid4()) for _ in range(20)]

    transfer_ids = [reserve_transfer_id(p) for p in payments] + [payout_transfer_id(p) for p in payments]

    assert len(set(transfer_ids)) == len(transfer_ids)


def test_only_the_funding_account_may_go_below_zero() -> None:
    assert [name for name, may_go_negative in ACCOUNTS if may_go_negative] == [FUNDING_ACCOUNT]
