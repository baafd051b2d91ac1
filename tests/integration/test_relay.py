"""The outbox relay on a real PostgreSQL: what the broker refuses for good is parked, anything else
(however the broker words it) is retried, so no hand-over event is stranded.

The broker here is a stand-in that answers as the embedded broker did in a chaos run: right after a
restart it answered some produce requests with UnknownError, and a relay that parked those rows
stranded their cases (a re-drive does not resend parked rows)."""

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, UnknownError

from services.runtime import crypto
from services.runtime.db import init_connection, runtime_queries
from services.runtime.messages import Record as MessageRecord
from services.runtime.messages import Undeliverable
from services.runtime.migrate import migrate, migrate_audit
from services.runtime.produce import Record, Sent
from services.runtime.relay import OutboxRelay
from services.runtime.uow import ServiceDatabase
from tests.conftest import Infra
from tests.integration.helpers import new_database
from tests.support import homeward_cli

pytestmark = [pytest.mark.integration]

RELAY_SECONDS_MAX = 10.0


class Broker:
    """Takes batches into a list (one batch per key); `refusals` maps a key to the errors its next
    tries get, in order. With `watch`, it notes during each call whether any connection to the
    database sits in an open transaction."""

    def __init__(self, refusals: dict[str, list[KafkaError]], watch: asyncpg.Pool | None = None) -> None:
        self.refusals = refusals
        self.published: list[str] = []
        self.records: list[Record] = []
        self.watch = watch
        self.transactions_open_while_publishing = 0

    async def send_batched(self, records: Sequence[Record]) -> list[Sent]:
        if self.watch is not None:
            self.transactions_open_while_publishing += await self.watch.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%'"
            )
        by_key: dict[bytes, list[Record]] = {}
        for record in records:
            by_key.setdefault(record.key, []).append(record)
        sent = []
        for key, batch in by_key.items():
            future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            pending = self.refusals.get(key.decode(), [])
            if pending:
                future.set_exception(pending.pop(0))
            else:
                self.published += [record.key.decode() for record in batch]
                self.records += batch
                future.set_result(None)
            sent.append(Sent(future, batch))
        return sent


@pytest.fixture
async def database_url(infra: Infra) -> str:
    url = new_database(infra, "relay")
    await asyncio.to_thread(migrate, url, "registration")
    await asyncio.to_thread(migrate_audit, url)  # the dlq commands record what they change
    return url


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # As the services' pools: jsonb comes back decoded.
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=4, server_settings={"search_path": "registration"}, init=init_connection
    )
    try:
        yield pool
    finally:
        await pool.close()


async def add_rows(pool: asyncpg.Pool, keys: list[str]) -> None:
    async with pool.acquire() as connection:
        for key in keys:
            await connection.execute(
                "INSERT INTO outbox (topic, key, value) VALUES ('registration.accepted.v1', $1, $2)", key, b"{}"
            )


async def relay_until(
    pool: asyncpg.Pool, broker: Broker, done: Any, *, dead_letter_key: bytes | None = None
) -> list[asyncpg.Record]:
    stopping = asyncio.Event()
    running = asyncio.create_task(relay(pool, broker, dead_letter_key).run(stopping))
    try:
        async with asyncio.timeout(RELAY_SECONDS_MAX):
            while True:
                rows = await pool.fetch("SELECT key, sent_at, parked_at, park_reason FROM outbox ORDER BY id")
                if done(rows):
                    return rows
                await asyncio.sleep(0.05)
    finally:
        stopping.set()
        await running


async def test_an_unknown_broker_error_is_retried_not_parked(pool: asyncpg.Pool) -> None:
    await add_rows(pool, ["case-a", "case-b", "case-c"])
    broker = Broker({"case-b": [UnknownError(), UnknownError()]})
    rows = await relay_until(pool, broker, lambda rows: all(row["sent_at"] for row in rows))
    assert [row["parked_at"] for row in rows] == [None, None, None]
    assert "case-b" in broker.published


async def test_a_record_the_broker_refuses_for_good_is_parked_and_the_rest_go_on(pool: asyncpg.Pool) -> None:
    await add_rows(pool, ["case-a", "too-large", "case-c"])
    broker = Broker({"too-large": [MessageSizeTooLargeError()] * 5})
    rows = await relay_until(pool, broker, lambda rows: all(row["sent_at"] or row["parked_at"] for row in rows))
    parked = {row["key"]: row["park_reason"] for row in rows if row["parked_at"]}
    assert list(parked) == ["too-large"] and parked["too-large"].startswith("MessageSizeTooLargeError")
    assert sorted(set(broker.published)) == ["case-a", "case-c"]


async def test_no_transaction_is_open_while_the_broker_is_asked(pool: asyncpg.Pool) -> None:
    await add_rows(pool, [f"case-{n}" for n in range(5)])
    broker = Broker({"case-2": [UnknownError()]}, watch=pool)
    await relay_until(pool, broker, lambda rows: all(row["sent_at"] for row in rows))
    assert broker.transactions_open_while_publishing == 0


async def test_one_relay_of_a_service_publishes_and_another_takes_over_when_it_stops(pool: asyncpg.Pool) -> None:
    """Replicas: the first relay holds the service's lock; the second stands by until it is gone."""
    first, second = Broker({}), Broker({})
    stopping_first, stopping_second = asyncio.Event(), asyncio.Event()
    running_first = asyncio.create_task(relay(pool, first).run(stopping_first))
    await add_rows(pool, ["case-a"])
    await until_sent(pool, 1)
    running_second = asyncio.create_task(relay(pool, second).run(stopping_second))
    await add_rows(pool, ["case-b"])
    await until_sent(pool, 2)
    assert (first.published, second.published) == (["case-a", "case-b"], [])
    stopping_first.set()
    await running_first
    await add_rows(pool, ["case-c"])
    await until_sent(pool, 3)
    stopping_second.set()
    await running_second
    assert second.published == ["case-c"]


def relay(pool: asyncpg.Pool, broker: Broker, dead_letter_key: bytes | None = None) -> OutboxRelay:
    return OutboxRelay(
        pool=pool, publisher=broker, runtime_queries=runtime_queries(), batch_size_max=100,
        poll_interval_seconds=0.01, retry_backoff_seconds=0.01, retry_backoff_max_seconds=0.05,
        dead_letter_key=dead_letter_key,
    )  # fmt: skip


async def until_sent(pool: asyncpg.Pool, count: int) -> None:
    async with asyncio.timeout(RELAY_SECONDS_MAX):
        while True:
            if await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL") >= count:
                return
            await asyncio.sleep(0.02)


def homeward(database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return homeward_cli("dlq", *arguments, HOMEWARD_DATABASE_URL=database_url, HOMEWARD_OPERATOR="test-operator")


async def test_an_operator_lists_parked_rows_and_hands_them_back_to_the_relay(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await add_rows(pool, ["too-large", "case-b"])
    broker = Broker({"too-large": [MessageSizeTooLargeError()] * 5})
    await relay_until(pool, broker, lambda rows: all(row["sent_at"] or row["parked_at"] for row in rows))

    listed = await asyncio.to_thread(homeward, database_url, "parked", "--service", "registration", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["service"], row["key"]) == ("registration", "too-large")
    assert row["park_reason"].startswith("MessageSizeTooLargeError")

    refused = await asyncio.to_thread(homeward, database_url, "unpark", "--service", "registration")
    assert refused.returncode != 0 and "--id" in refused.stderr
    released = await asyncio.to_thread(
        homeward, database_url, "unpark", "--service", "registration", "--id", str(row["id"])
    )
    assert released.returncode == 0 and "unparked 1" in released.stdout, released.stderr

    # The operator raised the broker's limit, so it takes the record now: the relay publishes it.
    broker.refusals.clear()
    rows = await relay_until(pool, broker, lambda rows: all(row["sent_at"] for row in rows))
    assert [row["parked_at"] for row in rows] == [None, None]
    assert broker.published.count("too-large") == 1
    again = await asyncio.to_thread(
        homeward, database_url, "unpark", "--service", "registration", "--id", str(row["id"])
    )
    assert again.returncode != 0 and "no parked row" in again.stderr


async def test_an_operator_republishes_what_was_sent_since_a_time_after_the_broker_lost_it(
    pool: asyncpg.Pool, database_url: str
) -> None:
    for service in ("travel", "arrival", "disbursement"):  # the command looks at every service's outbox
        await asyncio.to_thread(migrate, database_url, service)
    await add_rows(pool, ["case-a", "case-b"])
    await pool.execute("INSERT INTO outbox (topic, key, value) VALUES ('stipend.disbursed.v1', 'case-c', '{}')")
    broker = Broker({})
    await relay_until(pool, broker, lambda rows: all(row["sent_at"] for row in rows))
    await pool.execute("UPDATE outbox SET sent_at = now() - interval '3 hours' WHERE key = 'case-a'")

    counted = await asyncio.to_thread(homeward, database_url, "republish", "--since", "1h", "--dry-run", "--json")
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout)["events"] == 2
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0

    stipends = await asyncio.to_thread(
        homeward, database_url, "republish", "--since", "1h", "--service", "registration",
        "--topic", "stipend.disbursed.v1",
    )  # fmt: skip
    assert stipends.returncode == 0 and "handed 1 event(s)" in stipends.stdout, stipends.stderr
    rows = await relay_until(pool, broker, lambda rows: all(row["sent_at"] for row in rows))
    assert len(rows) == 3
    # Same rows, same envelope ids: sent twice, and the one sent before --since only once.
    assert sorted(broker.published) == ["case-a", "case-b", "case-c", "case-c"]

    wrong = await asyncio.to_thread(homeward, database_url, "republish", "--since", "yesterday")
    assert wrong.returncode != 0 and "ISO 8601" in wrong.stderr


CANARY = b'{"data": {"person": {"given_name": "Canary-7f3a", "phone": "+50499880077"}}}'


async def dead_letter_a_registration(pool: asyncpg.Pool, key: bytes) -> None:
    database = ServiceDatabase(pool, "registration", runtime_queries(), dead_letter_key=key)
    bad = Undeliverable(
        MessageRecord("registration.submitted.v1", 0, 41, b"app-1", CANARY), "invalid_payload", "person: missing"
    )
    async with database.unit() as uow:
        uow.dead_letter(bad)


async def test_a_dead_letter_copy_is_sealed_until_published_then_deleted(pool: asyncpg.Pool) -> None:
    """On the intake topic a dead letter holds a person's data: in the database it is sealed under
    the service's data key, and gone once the `.dlq` topic has it, bytes unchanged."""
    key = crypto.new_key()
    await dead_letter_a_registration(pool, key)
    [stored] = await pool.fetch("SELECT value, sealed, dead_letter FROM outbox")
    assert stored["sealed"] and stored["dead_letter"]
    assert b"Canary" not in stored["value"] and b"+50499880077" not in stored["value"]
    broker = Broker({})
    assert await relay_until(pool, broker, lambda rows: rows == [], dead_letter_key=key) == []
    [published] = broker.records
    assert (published.topic, published.key, published.value) == ("registration.submitted.v1.dlq", b"app-1", CANARY)
    assert dict(published.headers)["x-error-code"] == b"invalid_payload"


async def test_a_copy_sealed_under_another_key_is_parked_and_the_rest_go_on(pool: asyncpg.Pool) -> None:
    await dead_letter_a_registration(pool, crypto.new_key())
    await add_rows(pool, ["case-a"])
    broker = Broker({})
    rows = await relay_until(
        pool, broker, lambda rows: all(row["sent_at"] or row["parked_at"] for row in rows),
        dead_letter_key=crypto.new_key(),
    )  # fmt: skip
    assert broker.published == ["case-a"]
    [parked] = [row for row in rows if row["parked_at"]]
    assert "another data key" in parked["park_reason"]
