"""The payout-provider boundary, and a sandbox provider that keeps its own payout store."""

import secrets
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from services.runtime.db import load_queries

SANDBOX_SQL = Path(__file__).parent / "sandbox_sql.sql"


class PermanentPayoutError(Exception):
    """The payout cannot be made, now or later (e.g. the instrument cannot be read)."""


@dataclass(frozen=True)
class Payout:
    provider_ref: str
    amount: Decimal
    currency: str


class PayoutProvider(Protocol):
    async def pay(self, *, idempotency_key: str, amount: Decimal, currency: str, instrument: dict[str, Any]) -> Payout:
        """Pays once per idempotency key; asking again returns the first payout."""
        ...


class SandboxPayoutProvider:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queries = load_queries(SANDBOX_SQL)

    async def pay(self, *, idempotency_key: str, amount: Decimal, currency: str, instrument: dict[str, Any]) -> Payout:
        async with self.pool.acquire() as connection:
            row = await self.queries.record_payout(
                connection,
                idempotency_key=idempotency_key,
                provider_ref=f"SBXPAY-{secrets.token_hex(8).upper()}",
                amount=amount,
                currency=currency,
                method=instrument["method"],
            )
        return Payout(row["provider_ref"], row["amount"], row["currency"])
