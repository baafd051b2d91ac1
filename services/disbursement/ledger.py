"""A two-phase, append-only, idempotent double-entry ledger in PostgreSQL (after TigerBeetle).

A transfer moves an amount from a debit account to a credit account, either at once
(`single_phase`) or in two steps: `pending` reserves the amount, then `post_pending` or
`void_pending` resolves it, at most once. The transfer id is the idempotency key: the same
request again returns the original; the same id with any field changed is refused naming
the field; a transfer refused for a state reason keeps being refused the same way.
"""

import hashlib
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import asyncpg

from services.runtime.db import Connection, fetch_all

Kind = Literal["single_phase", "pending", "post_pending", "void_pending"]
Status = Literal["created", "exists", "refused"]

# Refusal codes.
EXCEEDS_CREDITS = "exceeds_credits"
ID_REUSED = "id_reused_with_different_fields"
PENDING_NOT_FOUND = "pending_transfer_not_found"
PENDING_ALREADY_RESOLVED = "pending_transfer_already_resolved"
ACCOUNT_NOT_FOUND = "account_not_found"
CURRENCY_MISMATCH = "currency_mismatch"
INVALID_AMOUNT = "invalid_amount"
SAME_ACCOUNT = "same_account"
CENT = Decimal("0.01")

# Refusals that depend on the ledger's state when the transfer was tried; they are kept so
# that the same id fails the same way later.
STATE_REFUSALS = frozenset({EXCEEDS_CREDITS, PENDING_ALREADY_RESOLVED})

GENESIS_HASH = "genesis"


@dataclass(frozen=True)
class Transfer:
    transfer_id: str
    kind: Kind
    debit_account: str
    credit_account: str
    amount: Decimal
    currency: str
    pending_id: str | None = None
    payment_id: UUID | None = None

    def fields(self) -> dict[str, str]:
        """The request as comparable text, in a fixed order (also what the hash covers)."""
        values = asdict(self)
        values["amount"] = f"{self.amount:.2f}"
        return {key: "" if value is None else str(value) for key, value in values.items()}


@dataclass(frozen=True)
class Result:
    status: Status
    transfer_id: str
    code: str | None = None
    field: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "refused"


class LedgerRefusal(Exception):
    """Raised inside the append savepoint so that nothing of a refused transfer remains."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def chain_hash(prev_hash: str, seq: int, transfer: Transfer) -> str:
    canonical = "|".join([prev_hash, str(seq), *transfer.fields().values()])
    return hashlib.sha256(canonical.encode()).hexdigest()


def first_difference(transfer: Transfer, recorded: dict[str, str]) -> str | None:
    """The first field in which a request differs from what was recorded under its id."""
    for key, value in transfer.fields().items():
        if recorded.get(key, "") != value:
            return key
    return None


def _recorded_fields(row: Any) -> dict[str, str]:
    return Transfer(
        transfer_id=row["transfer_id"],
        kind=row["kind"],
        debit_account=row["debit_account"],
        credit_account=row["credit_account"],
        amount=row["amount"],
        currency=row["currency"],
        pending_id=row["pending_id"],
        payment_id=row["payment_id"],
    ).fields()


def malformed(transfer: Transfer) -> str | None:
    """A request no ledger state could accept: not a positive amount in whole cents, or one account twice."""
    if not transfer.amount.is_finite() or transfer.amount <= 0 or transfer.amount != transfer.amount.quantize(CENT):
        return INVALID_AMOUNT
    if transfer.debit_account == transfer.credit_account:
        return SAME_ACCOUNT
    return None


async def create_transfer(connection: Connection, queries: Any, transfer: Transfer) -> Result:
    """Applies one transfer inside the caller's transaction; never raises for a refusal."""
    earlier = await _earlier_outcome(connection, queries, transfer)
    if earlier is not None:
        return earlier
    if (code := malformed(transfer)) is not None:
        return Result("refused", transfer.transfer_id, code)
    try:
        async with connection.transaction():  # a savepoint: a refusal leaves no trace but its record
            await _append(connection, queries, transfer)
    except LedgerRefusal as refusal:
        return await _refuse(connection, queries, transfer, refusal.code)
    except asyncpg.UniqueViolationError:
        # A concurrent transaction committed the same id or resolved the same pending transfer.
        earlier = await _earlier_outcome(connection, queries, transfer)
        return earlier or await _refuse(connection, queries, transfer, PENDING_ALREADY_RESOLVED)
    return Result("created", transfer.transfer_id)


async def _earlier_outcome(connection: Connection, queries: Any, transfer: Transfer) -> Result | None:
    recorded = await queries.get_transfer(connection, transfer_id=transfer.transfer_id)
    if recorded is not None:
        field = first_difference(transfer, _recorded_fields(recorded))
        if field is None:
            return Result("exists", transfer.transfer_id)
        return Result("refused", transfer.transfer_id, ID_REUSED, field)
    refusal = await queries.get_refusal(connection, transfer_id=transfer.transfer_id)
    if refusal is not None:
        field = first_difference(transfer, refusal["request"])
        if field is not None:
            return Result("refused", transfer.transfer_id, ID_REUSED, field)
        return Result("refused", transfer.transfer_id, refusal["code"])
    return None


async def _refuse(connection: Connection, queries: Any, transfer: Transfer, code: str) -> Result:
    if code in STATE_REFUSALS:
        await queries.record_refusal(connection, transfer_id=transfer.transfer_id, code=code, request=transfer.fields())
    return Result("refused", transfer.transfer_id, code)


async def _append(connection: Connection, queries: Any, transfer: Transfer) -> None:
    await _check_accounts(connection, queries, transfer)
    if transfer.kind in ("post_pending", "void_pending"):
        await _check_pending(connection, queries, transfer)
    head = await queries.advance_head(connection)
    digest = chain_hash(head["hash"], head["seq"], transfer)
    await queries.append_transfer(connection, seq=head["seq"], prev_hash=head["hash"], hash=digest, **asdict(transfer))
    await queries.set_head(connection, hash=digest)
    await _move_balances(connection, queries, transfer)


async def _check_accounts(connection: Connection, queries: Any, transfer: Transfer) -> None:
    codes = [transfer.debit_account, transfer.credit_account]
    rows = await fetch_all(queries.account_currencies(connection, codes=codes))
    currencies = {row["code"]: row["currency"] for row in rows}
    if set(codes) - set(currencies):
        raise LedgerRefusal(ACCOUNT_NOT_FOUND)
    if any(currency != transfer.currency for currency in currencies.values()):
        raise LedgerRefusal(CURRENCY_MISMATCH)


async def _check_pending(connection: Connection, queries: Any, transfer: Transfer) -> None:
    pending = await queries.get_transfer(connection, transfer_id=transfer.pending_id)
    if pending is None or pending["kind"] != "pending":
        raise LedgerRefusal(PENDING_NOT_FOUND)
    same = (pending["debit_account"], pending["credit_account"], pending["amount"], pending["currency"])
    if same != (transfer.debit_account, transfer.credit_account, transfer.amount, transfer.currency):
        raise LedgerRefusal(PENDING_NOT_FOUND)
    if await queries.resolution_of(connection, pending_id=transfer.pending_id) is not None:
        raise LedgerRefusal(PENDING_ALREADY_RESOLVED)


# How each kind moves the four balances: (pending change, posted change) on both sides.
_MOVES: dict[str, tuple[int, int]] = {
    "single_phase": (0, 1),
    "pending": (1, 0),
    "post_pending": (-1, 1),
    "void_pending": (-1, 0),
}


async def _move_balances(connection: Connection, queries: Any, transfer: Transfer) -> None:
    pending_sign, posted_sign = _MOVES[transfer.kind]
    pending, posted = transfer.amount * pending_sign, transfer.amount * posted_sign
    debited = await queries.debit(connection, code=transfer.debit_account, pending=pending, posted=posted)
    if debited is None:
        raise LedgerRefusal(EXCEEDS_CREDITS)
    if await queries.credit(connection, code=transfer.credit_account, pending=pending, posted=posted) is None:
        raise LedgerRefusal(ACCOUNT_NOT_FOUND)


def post_of(pending: Transfer, transfer_id: str) -> Transfer:
    return Transfer(
        transfer_id, "post_pending", pending.debit_account, pending.credit_account,
        pending.amount, pending.currency, pending.transfer_id, pending.payment_id,
    )  # fmt: skip


def void_of(pending: Transfer, transfer_id: str) -> Transfer:
    return Transfer(
        transfer_id, "void_pending", pending.debit_account, pending.credit_account,
        pending.amount, pending.currency, pending.transfer_id, pending.payment_id,
    )  # fmt: skip
