"""Nothing stranded: a service keeps re-publishing the events that hand a case downstream until
it sees a downstream service act on the case. Consumers deduplicate by envelope id, so a resent
event is a no-op where it already arrived, and a repair where it was lost (even with the broker's
data wiped)."""

from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from contracts.envelope import Envelope
from services.runtime import metrics
from services.runtime.db import fetch_all
from services.runtime.uow import UnitOfWork

logger = structlog.get_logger("homeward.redrive")


@dataclass(frozen=True)
class Redrive:
    """`opens_on`: topics this service emits that start downstream work on a case;
    `closes_on`: topics whose arrival shows the case moved on downstream."""

    opens_on: frozenset[str]
    closes_on: frozenset[str]


async def close_cases(events: list[Envelope[Any]], uow: UnitOfWork) -> None:
    """A run of events that show their cases moved on: the cases are closed by one upsert."""
    keys = sorted({str(case_id) for event in events if (case_id := getattr(event.data, "case_id", None)) is not None})
    if keys:
        await uow.runtime_queries.close_cases(uow.connection, keys=keys)


@dataclass
class RedriveSweeper:
    pool: asyncpg.Pool
    runtime_queries: Any
    redrive: Redrive
    after_seconds: int
    cap_seconds: int
    batch_size_max: int
    retention_hours: int

    async def sweep(self) -> int:
        async with self.pool.acquire() as connection, connection.transaction():
            stalled = await fetch_all(
                self.runtime_queries.stalled_cases(
                    connection,
                    after_seconds=self.after_seconds,
                    cap_seconds=self.cap_seconds,
                    limit=self.batch_size_max,
                )
            )
            keys = [row["case_key"] for row in stalled]
            if keys:
                await self.runtime_queries.requeue_events(connection, keys=keys, topics=sorted(self.redrive.opens_on))
                await self.runtime_queries.mark_redriven(connection, keys=keys)
                logger.warning("redrive.resent", cases=len(keys))
        metrics.REDRIVEN.inc(len(keys))
        return len(keys)

    async def forget_old_events(self) -> int:
        async with self.pool.acquire() as connection:
            await self.runtime_queries.forget_old_events(connection, retention_hours=self.retention_hours)
        return 0
