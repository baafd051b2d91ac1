"""The payout worker in-process on a real database, with a provider that looks at the database
while it is being asked: no transaction is open and no payment is locked during the call; a pass
that dies after its claim leaves the payments to the next pass once the lease ends, and that pass
asks about their keys before paying."""

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from services.disbursement import handlers
from services.disbursement.adapters.provider import ItemOutcome, Payout, PayoutItem
from services.disbursement.app import queries
from services.runtime import casekeys
from services.runtime.db import fetch_all, init_connection, runtime_queries
from services.runtime.migrate import migrate
from services.runtime.uow import ServiceDatabase
from tests.conftest import Infra
from tests.integration.helpers import new_database, sealed_for
from tests.support import TEST_CHAIN

pytestmark = pytest.mark.integration

STIPENDS = 30
WATCHER = "provider-watcher"
PROGRAM = handlers.Program(Decimal("1000.00"), "USD")


class WatchingProvider:
    """Pays every item; during each call it records what the database shows of the worker."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.open_transactions: list[int] = []
        self.lockable: list[bool] = []
        self.resolve_first: list[set[str]] = []
        self.fail_next = False

    async def pay_batch(self, items: list[PayoutItem], *, resolve_first: set[str]) -> dict[str, ItemOutcome]:
        self.resolve_first.append(resolve_first & {item.key for item in items})
        watcher = await asyncpg.connect(self.database_url, server_settings={"application_name": WATCHER})
        try:
            self.open_transactions.append(
                await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name <> $1 AND xact_start IS NOT NULL",
                    WATCHER,
                )
            )
            async with watcher.transaction():
                locked = await watcher.fetch(
                    "SELECT payment_id FROM disbursement.payments WHERE payment_id = ANY($1::uuid[]) FOR UPDATE NOWAIT",
                    [UUID(item.key) for item in items],
                )
                self.lockable.append(len(locked) == len(items))
        finally:
            await watcher.close()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the worker dies mid-call")
        return {item.key: Payout(item.key, f"REF-{item.key[:8]}", "paid", item.amount, item.currency) for item in items}

    async def pay(self, **_: Any) -> Payout:
        raise NotImplementedError

    async def lookup(self, key: str) -> Payout | None:
        raise NotImplementedError

    async def list_payouts(self) -> list[Payout]:
        raise NotImplementedError


@pytest.fixture
def database_url(infra: Infra) -> str:
    return new_database(infra, "homeward_worker")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    await asyncio.to_thread(migrate, database_url, "disbursement")
    created = await asyncpg.create_pool(
        database_url, server_settings={"search_path": "disbursement"}, init=init_connection
    )
    assert created is not None
    await handlers.fund_initial_budget(created, queries(TEST_CHAIN), Decimal("1000000.00"), "USD")
    yield created
    await created.close()


async def reserve(pool: asyncpg.Pool, infra: Infra, count: int) -> list[UUID]:
    """`count` accepted and verified cases, so `count` reserved stipends."""
    named, cases = queries(TEST_CHAIN), [uuid4() for _ in range(count)]
    async with ServiceDatabase(pool, "disbursement", runtime_queries()).unit() as uow:
        connection = uow.connection
        parts = [casekeys.take(sealed_for(infra, case_id), casekeys.PAYOUT) for case_id in cases]
        await named.payments.remember_cases(
            connection, case_ids=cases, identity_keys=[uuid4().hex for _ in cases],
            correlationids=[uuid4() for _ in cases], sealed=[part.ciphertext for part in parts],
            accepted_event_ids=[uuid4() for _ in cases], fingerprints=[None for _ in cases],  # no review holds here
        )  # fmt: skip
        await casekeys.keep_case_keys(uow, cases, parts, infra.keyring("disbursement"))
        await named.payments.remember_verified(connection, case_ids=cases, verified_event_ids=[uuid4() for _ in cases])
        await handlers.open_payments(uow, named, cases, PROGRAM)
    return cases


def worker(pool: asyncpg.Pool, infra: Infra, provider: WatchingProvider) -> handlers.PayoutWorker:
    return handlers.PayoutWorker(
        database=ServiceDatabase(pool, "disbursement", runtime_queries()), queries=queries(TEST_CHAIN),
        provider=provider,
        data_key=infra.keyring("disbursement"), batch_size_max=STIPENDS, batch_items_max=10,
        concurrency_max=2, call_seconds_max=5.0,
    )  # fmt: skip


async def statuses(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM payments GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


async def test_no_transaction_is_open_and_no_payment_locked_while_the_provider_is_asked(
    pool: asyncpg.Pool, infra: Infra, database_url: str
) -> None:
    await reserve(pool, infra, STIPENDS)
    provider = WatchingProvider(database_url)

    assert await worker(pool, infra, provider).pay_reserved() == STIPENDS

    assert len(provider.lockable) == STIPENDS // 10
    assert provider.open_transactions == [0] * len(provider.lockable)
    assert all(provider.lockable)
    assert await statuses(pool) == {"disbursed": STIPENDS}
    assert await pool.fetchval("SELECT count(*) FROM payments WHERE lease_id IS NOT NULL") == 0


async def test_a_pass_that_dies_after_its_claim_leaves_the_keys_to_be_looked_up_first(
    pool: asyncpg.Pool, infra: Infra, database_url: str
) -> None:
    await reserve(pool, infra, 10)
    provider = WatchingProvider(database_url)
    provider.fail_next = True
    payer = worker(pool, infra, provider)

    with pytest.raises(RuntimeError):
        await payer.pay_reserved()
    assert await payer.pay_reserved() == 0, "the claim's lease keeps a second pass off"
    await pool.execute("UPDATE payments SET leased_until = now() - interval '1 second'")  # the lease runs out
    assert await payer.pay_reserved() == 10

    first, second = provider.resolve_first
    assert first == set()
    payment_ids = {str(row["payment_id"]) for row in await pool.fetch("SELECT payment_id FROM payments")}
    assert second == payment_ids
    assert await statuses(pool) == {"disbursed": 10}
    assert await pool.fetchval("SELECT count(*) FROM transfers WHERE kind = 'post_pending'") == 10


async def test_a_callback_is_recorded_while_its_payment_is_locked_for_settling(
    pool: asyncpg.Pool, infra: Infra
) -> None:
    """The settling pass and the callback worker lock payments FOR NO KEY UPDATE: a callback's insert
    (whose foreign key takes a key-share lock on the payment) goes through at once."""
    [case_id] = await reserve(pool, infra, 1)
    payment_id = await pool.fetchval("SELECT payment_id FROM payments WHERE case_id = $1", case_id)
    async with pool.acquire() as settling, settling.transaction():
        locked = await fetch_all(queries().payments.lock_payments(settling, payment_ids=[payment_id], lease_id=None))
        assert [row["payment_id"] for row in locked] == [payment_id]
        async with pool.acquire() as receiving:
            await receiving.execute("SET lock_timeout = '1s'")
            recorded = await fetch_all(
                queries().payments.record_callbacks(
                    receiving, notification_ids=["notification-1"], payment_ids=[payment_id], statuses=["paid"],
                    provider_refs=["REF-1"], amounts=[Decimal("1000.00")], currencies=["USD"],
                )
            )  # fmt: skip
    assert [row["notification_id"] for row in recorded] == ["notification-1"]
