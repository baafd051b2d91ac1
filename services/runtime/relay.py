"""Publishes outbox rows to Kafka in batches, in commit order, then marks them sent.

A crash after publishing and before marking republishes the batch: consumers
deduplicate by envelope id, which is what at-least-once delivery asks of them.
"""

import asyncio
from typing import Any

import asyncpg
import structlog
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker

from services.runtime.db import TRANSIENT_ERRORS, fetch_all

logger = structlog.get_logger("homeward.relay")
PARK_REASON_CHARS_MAX = 300


class OutboxRelay:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        broker: KafkaBroker,
        runtime_queries: Any,
        batch_size_max: int,
        poll_interval_seconds: float,
    ) -> None:
        self.pool = pool
        self.broker = broker
        self.queries = runtime_queries
        self.batch_size_max = batch_size_max
        self.poll_interval_seconds = poll_interval_seconds
        self.published_total = 0

    async def publish_batch(self) -> int:
        """Publishes up to one batch; returns how many rows were sent."""
        async with self.pool.acquire() as connection, connection.transaction():
            if not await self.queries.try_relay_lock(connection):
                return 0
            rows = await fetch_all(self.queries.unsent_outbox(connection, limit=self.batch_size_max))
            if not rows:
                return 0
            try:
                await asyncio.gather(*[await self._publish(row) for row in rows])
            except KafkaError as error:
                if error.retriable:
                    raise
                # One row the broker refuses for good must not hold up the rest: find and park it.
                rows = await self._publish_one_by_one(connection, rows)
            await self.queries.mark_sent(connection, ids=[row["id"] for row in rows])
        self.published_total += len(rows)
        return len(rows)

    async def _publish(self, row: Any) -> "asyncio.Future[Any]":
        future: asyncio.Future[Any] = await self.broker.publish(
            row["value"], row["topic"], key=row["key"].encode(), headers=row["headers"] or None, no_confirm=True
        )
        return future

    async def _publish_one_by_one(self, connection: Any, rows: list[Any]) -> list[Any]:
        sent = []
        for row in rows:
            try:
                await (await self._publish(row))
            except KafkaError as error:
                if error.retriable:
                    raise
                reason = f"{type(error).__name__}: {error}"[:PARK_REASON_CHARS_MAX]
                await self.queries.park(connection, id=row["id"], reason=reason)
                logger.error("relay.parked", outbox_id=row["id"], event_type=row["topic"], reason=reason)
                continue
            sent.append(row)
        return sent

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                sent = await self.publish_batch()
            except TRANSIENT_ERRORS:
                logger.warning("relay.transient_failure", exc_info=True)
                sent = 0
            except Exception:
                logger.exception("relay.failed")
                sent = 0
            if sent < self.batch_size_max:
                try:
                    await asyncio.wait_for(stopping.wait(), self.poll_interval_seconds)
                except TimeoutError:
                    pass
