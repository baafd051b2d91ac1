"""Publishes outbox rows to Kafka in batches, in commit order, then marks them sent (and deletes
the dead-letter copies, which are kept only until published).

One relay per service publishes at a time: it holds a session advisory lock on a connection of
its own (the other replicas stand by and take over when that connection goes). Rows are read,
published and marked sent with no transaction open while the broker is asked. A crash after
publishing and before marking republishes the batch: consumers deduplicate by envelope id,
which is what at-least-once delivery asks of them.
"""

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import asyncpg
import structlog
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from services.runtime import crypto, metrics
from services.runtime.db import TRANSIENT_ERRORS, fetch_all
from services.runtime.produce import Record, Sent
from services.runtime.uow import dead_letter_binding
from services.runtime.wakeup import Wakeup

logger = structlog.get_logger("homeward.relay")
PARK_REASON_CHARS_MAX = 300
UNOPENED_REASON = "dead-letter copy sealed under another data key (HOMEWARD_DATA_KEY changed?)"
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


class Publisher(Protocol):
    """Hands records to the broker in batches (`services.runtime.produce.send_batched` on a producer)."""

    async def send_batched(self, records: Sequence[Record]) -> list[Sent]: ...


class OutboxRelay:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        publisher: Publisher,
        runtime_queries: Any,
        batch_size_max: int,
        poll_interval_seconds: float,
        retry_backoff_seconds: float = 0.5,
        retry_backoff_max_seconds: float = 10.0,
        wakeup: Wakeup | None = None,
        dead_letter_key: crypto.Keyring | None = None,
    ) -> None:
        self.pool = pool
        self.publisher = publisher
        self.queries = runtime_queries
        self.batch_size_max = batch_size_max
        self.poll_interval_seconds = poll_interval_seconds
        self.retry_backoff_seconds = retry_backoff_seconds
        self.retry_backoff_max_seconds = retry_backoff_max_seconds
        # Woken by the commits that write outbox rows; `poll_interval_seconds` is then only the
        # fallback pace. Without one, the relay polls at that interval.
        self.wakeup = wakeup
        # Opens the dead-letter copies the service sealed at rest (ServiceDatabase.dead_letter_key).
        self.dead_letter_key = dead_letter_key
        self.published_total = 0
        self.failures = 0
        """Failed tries in a row; the pause before the next doubles with each."""

    async def publish_batch(self, connection: Any) -> int:
        """Publishes up to one batch over `connection`, which holds the relay lock; returns how
        many rows were sent. No transaction is open while the broker is asked."""
        rows = await fetch_all(self.queries.unsent_outbox(connection, limit=self.batch_size_max))
        if not rows:
            return 0
        opened = await self._open(connection, rows)
        rows = [row for row in rows if row["id"] in opened]
        records = [opened[row["id"]] for row in rows]
        row_of = {id(record): row for record, row in zip(records, rows, strict=True)}
        sent = await self.publisher.send_batched(records)
        outcomes = await asyncio.gather(*(batch.future for batch in sent), return_exceptions=True)
        refused = []
        for batch, outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, REFUSED_FOR_GOOD):
                refused += [row_of[id(record)] for record in batch.records]
            elif isinstance(outcome, BaseException):
                # Nothing is marked: the next pass publishes the whole batch again (consumers
                # deduplicate what did arrive).
                raise outcome
        # One row the broker refuses for good must not hold up the rest: find and park it.
        parked = {row["id"] for row in await self._park_refused(connection, refused, opened)}
        published = [row for row in rows if row["id"] not in parked]
        copy_ids = [row["id"] for row in published if row["dead_letter"]]
        if copy_ids:
            ids = [row["id"] for row in published if not row["dead_letter"]]
            await self.queries.mark_sent_and_drop(connection, ids=ids, copy_ids=copy_ids)
        else:  # the common case: no dead-letter copy to look up and delete
            await self.queries.mark_sent(connection, ids=[row["id"] for row in published])
        self.published_total += len(published)
        for (was_parked, topic), count in Counter((row["id"] in parked, row["topic"]) for row in rows).items():
            (metrics.PARKED if was_parked else metrics.PUBLISHED).labels(topic).inc(count)
        return len(published)

    async def _open(self, connection: Any, rows: list[Any]) -> dict[int, Record]:
        """Each row as the record to send, a sealed dead-letter copy opened; a copy this process
        cannot open (sealed under another data key) is parked, so the rows behind it move on."""
        opened: dict[int, Record] = {}
        for row in rows:
            try:
                opened[row["id"]] = self._record(row)
            except crypto.UNSEAL_ERRORS:
                await self._park(
                    connection, row, "dead-letter copy sealed under another data key (HOMEWARD_DATA_KEY changed?)"
                )
                metrics.PARKED.labels(row["topic"]).inc()
        return opened

    def _record(self, row: Any) -> Record:
        headers = tuple((name, value.encode()) for name, value in (row["headers"] or {}).items())
        value = row["value"]
        if row["sealed"]:
            if self.dead_letter_key is None:
                raise ValueError("no data key to open a sealed dead-letter copy")
            binding = dead_letter_binding(row["topic"], row["key"])
            value = crypto.unseal_bytes(self.dead_letter_key, value.decode(), bound_to=binding)
        return Record(row["topic"], row["key"].encode(), value, headers)

    async def _park_refused(self, connection: Any, rows: list[Any], opened: dict[int, Record]) -> list[Any]:
        """Sends each row of a refused batch alone (as `_open` made it); parks (and returns) those
        refused on their own."""
        parked = []
        for row in rows:
            try:
                for batch in await self.publisher.send_batched([opened[row["id"]]]):
                    await batch.future
            except REFUSED_FOR_GOOD as error:
                await self._park(connection, row, f"{type(error).__name__}: {error}"[:PARK_REASON_CHARS_MAX])
                parked.append(row)
        return parked

    async def _park(self, connection: Any, row: Any, reason: str) -> None:
        await self.queries.park(connection, id=row["id"], reason=reason)
        logger.error("relay.parked", outbox_id=row["id"], event_type=row["topic"], reason=reason)

    async def run(self, stopping: asyncio.Event) -> None:
        """Relays while this process holds the service's relay lock; stands by while another
        replica holds it; backs off after failures (a broker or database that is away)."""
        while not stopping.is_set():
            try:
                async with self.pool.acquire() as connection:
                    if await self.queries.try_relay_lock(connection):
                        try:
                            await self._relay(connection, stopping)
                        finally:
                            # (Returning the connection to the pool would unlock it too.)
                            with contextlib.suppress(*TRANSIENT_ERRORS):
                                await self.queries.relay_unlock(connection)
            except (*TRANSIENT_ERRORS, KafkaError) as error:
                self.failures += 1
                logger.warning(
                    "relay.publish_failed", error=type(error).__name__, failures=self.failures, exc_info=True
                )
                metrics.RELAY_FAILURES.inc()
            except Exception:
                self.failures += 1
                logger.exception("relay.failed", failures=self.failures)
                metrics.RELAY_FAILURES.inc()
            # Standing by, or backing off after a failure.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._pause(self.failures))

    async def _relay(self, connection: Any, stopping: asyncio.Event) -> None:
        """Publishes batch after batch; a full batch goes on at once, less waits for a wake-up."""
        while not stopping.is_set():
            sent = await self.publish_batch(connection)
            self.failures = 0
            if sent >= self.batch_size_max:
                continue
            if self.wakeup is not None:
                await self.wakeup.wait(stopping, self.poll_interval_seconds)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.poll_interval_seconds)

    def _pause(self, failures: int) -> float:
        """The poll interval while all is well; after failures, a pause that doubles up to a cap, so
        that a broker that is away is not hammered (nor the log flooded)."""
        if not failures:
            return self.poll_interval_seconds
        doublings = min(failures - 1, BACKOFF_DOUBLINGS_MAX)
        return min(self.retry_backoff_max_seconds, self.retry_backoff_seconds * 2.0**doublings)
