"""Disbursement rules: one payment id per case, and distinct ledger transfers for each step of a payment."""

from uuid import uuid4

from services.disbursement.domain import (
    ACCOUNTS,
    BUDGET_ACCOUNT,
    funding_transfer_id,
    payment_id_for,
    post_transfer_id,
    reserve_transfer_id,
    return_transfer_id,
    void_transfer_id,
)


def test_payment_id_is_the_same_however_often_a_case_is_seen() -> None:
    case_id = uuid4()

    assert payment_id_for(case_id) == payment_id_for(case_id)
    assert payment_id_for(case_id) == payment_id_for(type(case_id)(str(case_id)))


def test_payment_ids_differ_across_cases() -> None:
    case_ids = [uuid4() for _ in range(50)]

    assert len({payment_id_for(case_id) for case_id in case_ids}) == len(case_ids)
    assert all(payment_id_for(case_id) != case_id for case_id in case_ids)


def test_each_step_of_one_payment_is_its_own_transfer() -> None:
    payment_id = payment_id_for(uuid4())

    steps = [
        reserve_transfer_id(payment_id, 1),
        reserve_transfer_id(payment_id, 2),
        post_transfer_id(payment_id),
        void_transfer_id(payment_id),
        return_transfer_id(payment_id),
    ]

    assert len(set(steps)) == len(steps)
    assert all(str(payment_id) in step for step in steps)
    assert reserve_transfer_id(payment_id, 1) == steps[0]


def test_transfers_of_different_payments_never_collide() -> None:
    payments = [payment_id_for(uuid4()) for _ in range(20)]

    transfer_ids = [reserve_transfer_id(p, 1) for p in payments] + [post_transfer_id(p) for p in payments]

    assert len(set(transfer_ids)) == len(transfer_ids)


def test_a_funding_reference_names_one_transfer() -> None:
    assert funding_transfer_id("grant-2026") == funding_transfer_id("grant-2026")
    assert funding_transfer_id("grant-2026") != funding_transfer_id("grant-2027")


def test_only_the_budget_is_limited_to_what_it_was_funded() -> None:
    assert [name for name, limited in ACCOUNTS if limited] == [BUDGET_ACCOUNT]
