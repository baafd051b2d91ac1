"""Disbursement rules: the ledger's accounts, payment ids, and what each transfer is called."""

import hashlib
import hmac
from typing import Any
from uuid import UUID, uuid5

from services.runtime import crypto

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
HELD_INSTRUMENT_SHARED = "instrument_shared"
"""Contract v1.1: the payout instrument already received a stipend for another identity."""
HELD_PROGRAM_PAUSED = "program_paused"
FAILED_REVIEW_REFUSED = "review_refused"
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


def normalized_instrument(payout: dict[str, Any]) -> str | None:
    """A payout instrument as the same text however it was written: the E.164 number of a mobile
    wallet (digits after the plus); a bank's code and the account number, upper case, without
    spaces, dashes or dots. None for a method it does not know."""
    if payout.get("method") == "mobile_money":
        digits = "".join(ch for ch in str(payout.get("msisdn", "")) if ch.isdigit())
        return f"mobile_money:{digits}" if digits else None
    if payout.get("method") == "bank_account":
        bank = "".join(str(payout.get("bank_code", "")).split()).upper()
        account = "".join(ch for ch in str(payout.get("account_number", "")) if ch not in " -.").upper()
        return f"bank_account:{bank}:{account}" if bank and account else None
    return None


def instrument_fingerprint(secret: bytes, payout: dict[str, Any]) -> str | None:
    """The keyed hash of a normalized instrument (`<key id>:<hex>`), never the instrument itself:
    equal for two cases paid to one wallet or account, and useless to whoever lacks the secret."""
    normalized = normalized_instrument(payout)
    if normalized is None:
        return None
    return f"{crypto.key_id(secret)}:{hmac.new(secret, normalized.encode(), hashlib.sha256).hexdigest()}"
