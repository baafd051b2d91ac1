"""Disbursement rules: the ledger's accounts, payment ids, and what each transfer is called."""

from uuid import UUID, uuid5

FUNDING_ACCOUNT = "program_funding"
"""Where the program's money comes from (the government's contribution); it has no limit."""
BUDGET_ACCOUNT = "program_budget"
"""Money available for stipends; it can never spend more than it was funded, counting reservations."""
STIPENDS_ACCOUNT = "stipends_paid"
"""Stipends reserved (pending) and paid (posted) to participants."""

# (code, debits_must_not_exceed_credits)
ACCOUNTS: tuple[tuple[str, bool], ...] = (
    (FUNDING_ACCOUNT, False),
    (BUDGET_ACCOUNT, True),
    (STIPENDS_ACCOUNT, False),
)

INITIAL_FUNDING_REFERENCE = "initial"
HELD_BUDGET_EXHAUSTED = "budget_exhausted"
REFUSED_IDENTITY_PAID = "identity_already_paid"
FAILED_INSTRUMENT_UNREADABLE = "payout_instrument_unreadable"
FAILED_DECLINED = "payout_declined"
FAILED_RETURNED = "payout_returned"

_PAYMENT_NAMESPACE = UUID("1b0f8e4e-6a53-4f47-9a44-3c7f0f6f2a10")


def payment_id_for(case_id: UUID) -> UUID:
    """One payment id per case, the same however often the case is seen."""
    return uuid5(_PAYMENT_NAMESPACE, str(case_id))


def funding_transfer_id(reference: str) -> str:
    return f"fund:{reference}"


def reserve_transfer_id(payment_id: UUID, attempt: int) -> str:
    """Each try to reserve has its own id: a refused id keeps failing, so a retry after a top-up
    needs a new one."""
    return f"reserve:{payment_id}:{attempt}"


def post_transfer_id(payment_id: UUID) -> str:
    return f"post:{payment_id}"


def void_transfer_id(payment_id: UUID) -> str:
    return f"void:{payment_id}"


def return_transfer_id(payment_id: UUID) -> str:
    """The reversing transfer of a paid stipend that the provider returned."""
    return f"return:{payment_id}"
