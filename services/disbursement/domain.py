"""Disbursement rules: the ledger's accounts, payment ids, and what each transfer is called."""

from uuid import UUID, uuid5

FUNDING_ACCOUNT = "program_funding"
"""Where the program's money comes from; the only account allowed below zero."""
BUDGET_ACCOUNT = "program_budget"
"""Money available for stipends; a database constraint keeps it at zero or above."""
RESERVED_ACCOUNT = "stipends_reserved"
"""Stipends approved and waiting for the payout provider."""
PAID_ACCOUNT = "stipends_paid"
"""Stipends the provider has paid out."""

ACCOUNTS: tuple[tuple[str, bool], ...] = (
    (FUNDING_ACCOUNT, True),
    (BUDGET_ACCOUNT, False),
    (RESERVED_ACCOUNT, False),
    (PAID_ACCOUNT, False),
)

INITIAL_FUNDING_TRANSFER = "funding:initial"
HELD_BUDGET_EXHAUSTED = "budget_exhausted"
REFUSED_IDENTITY_PAID = "identity_already_paid"
FAILED_INSTRUMENT_UNREADABLE = "payout_instrument_unreadable"

_PAYMENT_NAMESPACE = UUID("1b0f8e4e-6a53-4f47-9a44-3c7f0f6f2a10")


def payment_id_for(case_id: UUID) -> UUID:
    """One payment id per case, the same however often the case is seen."""
    return uuid5(_PAYMENT_NAMESPACE, str(case_id))


def reserve_transfer_id(payment_id: UUID) -> str:
    return f"reserve:{payment_id}"


def payout_transfer_id(payment_id: UUID) -> str:
    return f"payout:{payment_id}"


def release_transfer_id(payment_id: UUID) -> str:
    """Returns a reservation to the budget when a stipend cannot be paid."""
    return f"release:{payment_id}"
