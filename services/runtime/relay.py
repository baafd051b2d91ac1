"""Publishes outbox rows to Kafka in batches, in commit order, then marks them sent.

A crash after publishing and before marking republishes the batch: consumers
deduplicate by envelope id, which is what at-least-once delivery asks of them.
"""

import asyncio
import contextlib
from typing import Any

import asyncpg
import structlog
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from faststream.kafka import KafkaBroker

from services.runtime import metrics
from services.runtime.db import TRANSIENT_ERRORS, fetch_all
from services.runtime.wakeup import Wakeup

logger = structlog.get_logger("homeward.relay")
PARK_REASON_CHARS_MAX = 300
# Enough to reach any sensible cap; more would only overflow a float during a long outage.
BACKOFF_DOUBLINGS_MAX = 30
# What the broker refuses because of the record itself: it would be refused on every try, so that
# row is parked (kept, with the reason, for an operator) and the rows behind it keep moving. Any
# other failure is retried, however the broker words it: parking a hand-over event strands its case
# (a re-drive skips parked rows), and a broker recovering its storage after a restart answers
# UnknownError for a while.
REFUSED_FOR_GOOD: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    InvalidTopicError,
)


class OutboxRelay:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        broker: KafkaBroker,
        runtime_queries: Any,
        batch_size_max: int,
        poll_interval_seconds: float,
        retry_backoff_seconds: float = 0.5,
        retry_backoff_max_seconds: float = 10.0,
        wakeup: Wakeup | None = None,
    ) -> None:
        self.pool = pool
        self.broker = broker
        self.queries = runtime_queries
        self.batch_size_max = batch_size_max
        self.poll_interval_seconds = poll_interval_seconds
        self.retry_backoff_seconds = retry_backoff_seconds
        self.retry_backoff_max_seconds = retry_backoff_max_seconds
        # Woken by the commits that write outbox rows; `poll_interval_seconds` is then only the
        # fallback pace. Without one, the relay polls at that interval.
        self.wakeup = wakeup
        self.published_total = 0

    async def publish_batch(self) -> int:
        """Publishes up to one batch; returns how many rows were sent."""
        async with self.pool.acquire() as connection, connection.transaction():
            if not await self.queries.try_relay_lock(connection):
                return 0
            rows = await fetch_all(self.queries.unsent_outbox(connection, limit=self.batch_size_max))
            if not rows:
                return 0
            parked = []
            try:
                await asyncio.gather(*[await self._publish(row) for row in rows])
            except REFUSED_FOR_GOOD:
                # One row the broker refuses for good must not hold up the rest: find and park it.
                sent = await self._publish_one_by_one(connection, rows)
                parked, rows = [row for row in rows if row not in sent], sent
            await self.queries.mark_sent(connection, ids=[row["id"] for row in rows])
        self.published_total += len(rows)
        for row in rows:
            metrics.PUBLISHED.labels(row["topic"]).inc()
        for row in parked:
            metrics.PARKED.labels(row["topic"]).inc()
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
            except REFUSED_FOR_GOOD as error:
                reason = f"{type(error).__name__}: {error}"[:PARK_REASON_CHARS_MAX]
                await self.queries.park(connection, id=row["id"], reason=reason)
                logger.error("relay.parked", outbox_id=row["id"], event_type=row["topic"], reason=reason)
                continue
            sent.append(row)
        return sent

    async def run(self, stopping: asyncio.Event) -> None:
        failures = 0
        while not stopping.is_set():
            try:
                sent = await self.publish_batch()
                failures = 0
            except (*TRANSIENT_ERRORS, KafkaError) as error:
                failures += 1
                logger.warning("relay.publish_failed", error=type(error).__name__, failures=failures, exc_info=True)
                metrics.RELAY_FAILURES.inc()
                sent = 0
            except Exception:
                failures += 1
                logger.exception("relay.failed", failures=failures)
                metrics.RELAY_FAILURES.inc()
                sent = 0
            if sent >= self.batch_size_max:
                continue
            if self.wakeup is not None and not failures:
                await self.wakeup.wait(stopping, self.poll_interval_seconds)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self._pause(failures))

    def _pause(self, failures: int) -> float:
        """The poll interval while all is well; after failures, a pause that doubles up to a cap, so
        that a broker that is away is not hammered (nor the log flooded)."""
        if not failures:
            return self.poll_interval_seconds
        doublings = min(failures - 1, BACKOFF_DOUBLINGS_MAX)
        return min(self.retry_backoff_max_seconds, self.retry_backoff_seconds * 2.0**doublings)
