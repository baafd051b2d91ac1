"""A two-phase, append-only, idempotent double-entry ledger in PostgreSQL (after TigerBeetle).

A transfer moves an amount from a debit account to a credit account, either at once
(`single_phase`) or in two steps: `pending` reserves the amount, then `post_pending` or
`void_pending` resolves it, at most once. The transfer id is the idempotency key: the same
request again returns the original; the same id with any field changed is refused naming
the field; a transfer refused for a state reason keeps being refused the same way.
"""

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal
from uuid import UUID

from services.runtime import crypto
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
LEDGER_KEY_BYTES_MIN = 32


@dataclass(frozen=True)
class ChainKey:
    """The key of the journal's hash chain, held by disbursement (and by whoever verifies): each
    row's hash is an HMAC-SHA256 under it, so someone who can write the database but does not hold
    the key cannot rewrite a row and recompute the chain after it. A hash names the key's id
    (`<key id>:<hex>`), as a sealed value names its data key (`crypto.key_id`)."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < LEDGER_KEY_BYTES_MIN:
            raise ValueError(f"a ledger key has at least {LEDGER_KEY_BYTES_MIN} bytes")

    @cached_property
    def key_id(self) -> str:
        """Computed once: every journal row names it."""
        return crypto.key_id(self.secret)

    def seal(self, prev_hash: str, seq: int, transfer: "Transfer") -> str:
        canonical = "|".join([prev_hash, str(seq), *transfer.fields().values()])
        return f"{self.key_id}:{hmac.new(self.secret, canonical.encode(), hashlib.sha256).hexdigest()}"


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
        return {
            "transfer_id": self.transfer_id,
            "kind": self.kind,
            "debit_account": self.debit_account,
            "credit_account": self.credit_account,
            "amount": f"{self.amount:.2f}",
            "currency": self.currency,
            "pending_id": self.pending_id or "",
            "payment_id": "" if self.payment_id is None else str(self.payment_id),
        }

    def row(self) -> dict[str, Any]:
        """The request as journal columns."""
        return {
            "transfer_id": self.transfer_id, "kind": self.kind, "debit_account": self.debit_account,
            "credit_account": self.credit_account, "amount": self.amount, "currency": self.currency,
            "pending_id": self.pending_id, "payment_id": self.payment_id,
        }  # fmt: skip


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


async def create_transfer(connection: Connection, queries: Any, transfer: Transfer, chain: ChainKey) -> Result:
    """Applies one transfer inside the caller's transaction; never raises for a refusal."""
    [result] = await create_transfers(connection, queries, [transfer], chain)
    return result


async def create_transfers(
    connection: Connection, queries: Any, transfers: Sequence[Transfer], chain: ChainKey
) -> list[Result]:
    """Applies `transfers` in order inside the caller's transaction, each exactly as if it were
    applied alone after the ones before it; never raises for a refusal.

    A handful of statements whatever the batch's size: lock the chain head (every writer takes it
    first, so nothing read next can change), read what the batch needs (earlier transfers and
    refusals under its ids, the pending transfers it resolves, its accounts, locked), decide each
    transfer in memory against a running state, then write the journal rows, the refusals, one
    update per touched account and the head. The table constraints stay the last word: a decision
    they contradict fails the whole transaction rather than being written."""
    if not transfers:
        return []
    head = await queries.lock_head(connection)
    ids = [transfer.transfer_id for transfer in transfers]
    pending_ids = [transfer.pending_id for transfer in transfers if transfer.pending_id is not None]
    codes = sorted({code for transfer in transfers for code in (transfer.debit_account, transfer.credit_account)})
    batch = _Batch(
        chain=chain,
        seq=head["seq"],
        hash=head["hash"],
        recorded={row["transfer_id"]: dict(row) for row in await fetch_all(
            queries.get_transfers(connection, transfer_ids=ids + pending_ids)
        )},
        refusals={row["transfer_id"]: (row["code"], row["request"]) for row in await fetch_all(
            queries.get_refusals(connection, transfer_ids=ids)
        )},
        resolved={row["pending_id"] for row in await fetch_all(
            queries.resolutions_of(connection, pending_ids=pending_ids)
        )} if pending_ids else set(),
        accounts={row["code"]: _Account.of(row) for row in await fetch_all(
            queries.lock_accounts(connection, codes=codes)
        )},
    )  # fmt: skip
    results = [batch.apply(transfer) for transfer in transfers]
    await batch.write(connection, queries)
    return results


@dataclass
class _Account:
    currency: str
    limited: bool
    debits_pending: Decimal
    debits_posted: Decimal
    credits_pending: Decimal
    credits_posted: Decimal

    def balances(self) -> tuple[Decimal, ...]:
        return self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted

    @classmethod
    def of(cls, row: Any) -> "_Account":
        return cls(row["currency"], row["debits_must_not_exceed_credits"], row["debits_pending"],
                   row["debits_posted"], row["credits_pending"], row["credits_posted"])  # fmt: skip


# How each kind moves the four balances: (pending change, posted change) on both sides.
MOVES: dict[str, tuple[int, int]] = {
    "single_phase": (0, 1),
    "pending": (1, 0),
    "post_pending": (-1, 1),
    "void_pending": (-1, 0),
}


@dataclass
class _Batch:
    """The ledger as a batch sees it: what was read, plus what the batch decided so far."""

    chain: ChainKey
    seq: int
    hash: str
    recorded: dict[str, dict[str, Any]]
    refusals: dict[str, tuple[str, dict[str, str]]]
    resolved: set[str]
    accounts: dict[str, _Account]
    appended: list[dict[str, Any]] = field(default_factory=list)
    refused: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    opening: dict[str, tuple[Decimal, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.opening = {code: account.balances() for code, account in self.accounts.items()}

    def apply(self, transfer: Transfer) -> Result:
        earlier = self._earlier_outcome(transfer)
        if earlier is not None:
            return earlier
        if (code := malformed(transfer)) is not None:
            return Result("refused", transfer.transfer_id, code)
        if (code := self._refusal(transfer)) is not None:
            if code in STATE_REFUSALS:
                self.refusals[transfer.transfer_id] = (code, transfer.fields())
                self.refused.append((transfer.transfer_id, code, transfer.fields()))
            return Result("refused", transfer.transfer_id, code)
        self._append(transfer)
        return Result("created", transfer.transfer_id)

    def _earlier_outcome(self, transfer: Transfer) -> Result | None:
        recorded = self.recorded.get(transfer.transfer_id)
        if recorded is not None:
            field_name = first_difference(transfer, _recorded_fields(recorded))
            if field_name is None:
                return Result("exists", transfer.transfer_id)
            return Result("refused", transfer.transfer_id, ID_REUSED, field_name)
        refusal = self.refusals.get(transfer.transfer_id)
        if refusal is not None:
            code, request = refusal
            field_name = first_difference(transfer, request)
            if field_name is not None:
                return Result("refused", transfer.transfer_id, ID_REUSED, field_name)
            return Result("refused", transfer.transfer_id, code)
        return None

    def _refusal(self, transfer: Transfer) -> str | None:
        """Why the ledger as it stands now refuses the transfer, or None."""
        debit, credit = self.accounts.get(transfer.debit_account), self.accounts.get(transfer.credit_account)
        if debit is None or credit is None:
            return ACCOUNT_NOT_FOUND
        if debit.currency != transfer.currency or credit.currency != transfer.currency:
            return CURRENCY_MISMATCH
        if transfer.kind in ("post_pending", "void_pending"):
            pending = self.recorded.get(transfer.pending_id or "")
            if pending is None or pending["kind"] != "pending":
                return PENDING_NOT_FOUND
            same = (pending["debit_account"], pending["credit_account"], pending["amount"], pending["currency"])
            if same != (transfer.debit_account, transfer.credit_account, transfer.amount, transfer.currency):
                return PENDING_NOT_FOUND
            if transfer.pending_id in self.resolved:
                return PENDING_ALREADY_RESOLVED
        pending_sign, posted_sign = MOVES[transfer.kind]
        pending_change, posted_change = transfer.amount * pending_sign, transfer.amount * posted_sign
        spent = debit.debits_pending + pending_change + debit.debits_posted + posted_change
        if debit.limited and spent > debit.credits_posted:
            return EXCEEDS_CREDITS
        return None

    def _append(self, transfer: Transfer) -> None:
        self.seq += 1
        digest = self.chain.seal(self.hash, self.seq, transfer)
        row = {**transfer.row(), "seq": self.seq, "prev_hash": self.hash, "hash": digest}
        self.appended.append(row)
        self.recorded[transfer.transfer_id] = row
        self.hash = digest
        if transfer.pending_id is not None:
            self.resolved.add(transfer.pending_id)
        pending_sign, posted_sign = MOVES[transfer.kind]
        debit, credit = self.accounts[transfer.debit_account], self.accounts[transfer.credit_account]
        debit.debits_pending += transfer.amount * pending_sign
        debit.debits_posted += transfer.amount * posted_sign
        credit.credits_pending += transfer.amount * pending_sign
        credit.credits_posted += transfer.amount * posted_sign

    async def write(self, connection: Connection, queries: Any) -> None:
        """One statement: the journal rows, the kept refusals, the accounts' changes and the head."""
        if not (self.appended or self.refused):
            return
        rows = self.appended
        changes = {
            code: [now - before for now, before in zip(account.balances(), self.opening[code], strict=True)]
            for code, account in self.accounts.items()
            if account.balances() != self.opening[code]
        }
        await queries.write_batch(
            connection,
            seqs=[row["seq"] for row in rows],
            transfer_ids=[row["transfer_id"] for row in rows],
            kinds=[row["kind"] for row in rows],
            debit_accounts=[row["debit_account"] for row in rows],
            credit_accounts=[row["credit_account"] for row in rows],
            amounts=[row["amount"] for row in rows],
            currencies=[row["currency"] for row in rows],
            pending_ids=[row["pending_id"] for row in rows],
            payment_ids=[row["payment_id"] for row in rows],
            prev_hashes=[row["prev_hash"] for row in rows],
            hashes=[row["hash"] for row in rows],
            refused_ids=[transfer_id for transfer_id, _, _ in self.refused],
            refused_codes=[code for _, code, _ in self.refused],
            refused_requests=[json.dumps(request) for _, _, request in self.refused],
            codes=list(changes),
            debits_pending=[change[0] for change in changes.values()],
            debits_posted=[change[1] for change in changes.values()],
            credits_pending=[change[2] for change in changes.values()],
            credits_posted=[change[3] for change in changes.values()],
            seq=self.seq,
            hash=self.hash,
        )


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
