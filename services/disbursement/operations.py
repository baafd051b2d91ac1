"""Operator checks of the money: balances, verification of the ledger's invariants, and
reconciliation against the payout provider's own list."""

from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from services.disbursement import ledger
from services.disbursement.adapters.provider import Payout
from services.disbursement.stipends import Queries
from services.runtime.db import Connection, fetch_all

BALANCE_FIELDS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


@dataclass(frozen=True)
class Balance:
    code: str
    currency: str
    limited: bool
    debits_pending: Decimal
    debits_posted: Decimal
    credits_pending: Decimal
    credits_posted: Decimal

    @property
    def posted(self) -> Decimal:
        """Credits minus debits, posted only."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> Decimal:
        """What the account can still spend: posted balance less what is reserved."""
        return self.posted - self.debits_pending


async def balances(connection: Connection, queries: Queries) -> list[Balance]:
    rows = await fetch_all(queries.ledger.balances(connection))
    return [
        Balance(row["code"], row["currency"], row["debits_must_not_exceed_credits"],
                *(row[name] for name in BALANCE_FIELDS))
        for row in rows
    ]  # fmt: skip


def _expected_balances(journal: list[Any]) -> dict[str, dict[str, Decimal]]:
    expected: dict[str, dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(BALANCE_FIELDS, Decimal("0.00")))
    for row in journal:
        pending_sign, posted_sign = ledger.MOVES[row["kind"]]
        for side, account in (("debits", row["debit_account"]), ("credits", row["credit_account"])):
            expected[account][f"{side}_pending"] += row["amount"] * pending_sign
            expected[account][f"{side}_posted"] += row["amount"] * posted_sign
    return expected


def _chain_breaches(journal: list[Any], chain: ledger.ChainKey | None) -> list[str]:
    if chain is None:
        return ["hash chain not checked: no ledger key (HOMEWARD_LEDGER_KEY)"]
    breaches, previous = [], ledger.GENESIS_HASH
    for position, row in enumerate(journal, start=1):
        if row["seq"] != position:
            breaches.append(f"journal gap: expected seq {position}, found {row['seq']}")
            break
        transfer = ledger.Transfer(
            row["transfer_id"], row["kind"], row["debit_account"], row["credit_account"],
            row["amount"], row["currency"], row["pending_id"], row["payment_id"],
        )  # fmt: skip
        if row["hash"].partition(":")[0] != chain.key_id:
            breaches.append(f"hash chain at seq {row['seq']} names key {row['hash'].partition(':')[0]!r}, "
                            f"not this ledger key's {chain.key_id!r}")  # fmt: skip
            break
        if row["prev_hash"] != previous or row["hash"] != chain.seal(previous, row["seq"], transfer):
            breaches.append(f"hash chain broken at seq {row['seq']} ({row['transfer_id']})")
            break
        previous = row["hash"]
    return breaches


async def verify(connection: Connection, queries: Queries, provider_payouts: list[Payout] | None) -> list[str]:
    """Every breach of the ledger's invariants, named; an empty list means the ledger is sound."""
    accounts = await balances(connection, queries)
    journal = await fetch_all(queries.ledger.journal(connection))
    breaches = []
    for pending_or_posted in ("pending", "posted"):
        debits = sum((getattr(a, f"debits_{pending_or_posted}") for a in accounts), Decimal(0))
        credits = sum((getattr(a, f"credits_{pending_or_posted}") for a in accounts), Decimal(0))
        if debits != credits:
            breaches.append(f"{pending_or_posted} debits {debits} != {pending_or_posted} credits {credits}")
    expected = _expected_balances(journal)
    for account in accounts:
        for name in BALANCE_FIELDS:
            actual, summed = getattr(account, name), expected[account.code][name]
            if actual != summed:
                breaches.append(f"{account.code}.{name} is {actual} but its transfers sum to {summed}")
    breaches += _chain_breaches(journal, queries.chain)
    head = await queries.ledger.head(connection)
    last = (journal[-1]["seq"], journal[-1]["hash"]) if journal else (0, ledger.GENESIS_HASH)
    if head is not None and (head["seq"], head["hash"]) != last:
        breaches.append(f"the chain's head (seq {head['seq']}) is not its last row (seq {last[0]}): rows were removed")
    twice = await queries.payments.identities_paid_twice(connection)
    if twice:
        breaches.append(f"{twice} identities have more than one posted stipend")
    if provider_payouts is not None:
        report = await reconcile(connection, queries, provider_payouts)
        breaches += [f"posted stipend without exactly one provider payout: {key}" for key in report.missing]
    return breaches


@dataclass
class Reconciliation:
    missing: list[str] = field(default_factory=list)  # paid in the ledger, unknown to the provider
    extra: list[str] = field(default_factory=list)  # paid by the provider, not in the ledger
    mismatched: list[str] = field(default_factory=list)  # both know it, but they disagree

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.mismatched)


async def reconcile(connection: Connection, queries: Queries, provider_payouts: list[Payout]) -> Reconciliation:
    ledger_paid = {
        str(row["payment_id"]): row for row in await fetch_all(queries.payments.disbursed_payments(connection))
    }
    provider_paid = {payout.key: payout for payout in provider_payouts if payout.status in ("paid", "returned")}
    report = Reconciliation(
        missing=sorted(set(ledger_paid) - set(provider_paid)),
        extra=sorted(set(provider_paid) - set(ledger_paid)),
    )
    for key in sorted(set(ledger_paid) & set(provider_paid)):
        mine, theirs = ledger_paid[key], provider_paid[key]
        ledger_status = "paid" if mine["status"] == "disbursed" else "returned"
        differences = [
            name for name, ours, provider in (
                ("amount", mine["amount"], theirs.amount), ("currency", mine["currency"], theirs.currency),
                ("provider_ref", mine["provider_ref"], theirs.provider_ref), ("status", ledger_status, theirs.status),
            ) if ours != provider
        ]  # fmt: skip
        if differences:
            report.mismatched.append(f"{key}: {', '.join(differences)}")
    return report


async def audit(
    connection: Connection, queries: Queries, fetch_payouts: Callable[[], Awaitable[list[Payout]]] | None
) -> tuple[list[str], Reconciliation | None]:
    """`verify` and `reconcile` over one snapshot of the ledger, read before the provider's list.

    The provider pays before the ledger posts, so a ledger read first can only lag the provider:
    a payout in flight may show as `extra`, never a posted stipend as `missing`."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        breaches = await verify(connection, queries, None)
        if fetch_payouts is None:
            return breaches, None
        report = await reconcile(connection, queries, await fetch_payouts())
    breaches += [f"posted stipend without exactly one provider payout: {key}" for key in report.missing]
    return breaches, report
