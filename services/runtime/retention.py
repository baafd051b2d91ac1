"""Retention by erasure: `HOMEWARD_PII_RETENTION_DAYS` after a case closes (paid, failed,
rejected at arrival, withdrawn, or its booking failed), each service that holds its personal data erases
it: the readers destroy the case's keys (`case_keys`, services/runtime/casekeys.py), so their
ciphertext no longer opens; every holder runs its own `erase_cases` statement over what else it
kept (registration: its copy of `sealed` and the accepted event in its outbox). The ledger, the
identity key, the case's timeline and its consent record stay.

A service notes in `closed_cases` when its copy's clock starts: on the closing events it decides
itself, in the transaction that emits them, and on those it learns from others, on its own
consumer group (travel, which needs the traveler only to book, starts it at the booking's
outcome: `Retention.decides` and `consumes`). A sweep (and `homeward retention run`) erases what
is due, a batch at a time, each batch in one transaction.
"""

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from contracts.envelope import Envelope
from contracts.events import ArrivalRejected, CaseWithdrawn, StipendDisbursed, StipendFailed, TravelBookingFailed
from services.runtime import metrics
from services.runtime.db import Connection, fetch_all, load_queries
from services.runtime.uow import UnitOfWork

logger = structlog.get_logger("homeward.retention")

CLOSING_TOPICS = frozenset(
    {StipendDisbursed.TOPIC, StipendFailed.TOPIC, ArrivalRejected.TOPIC, TravelBookingFailed.TOPIC, CaseWithdrawn.TOPIC}
)
"""A case is closed, and its personal data no longer needed, once one of these is seen."""
ERASURE_BATCH_MAX = 500
"""Cases erased in one transaction."""


@dataclass(frozen=True)
class Retention:
    """A service that keeps personal data: its `erase_cases` statement lives in `sql` (one
    statement over `:case_ids`, run in the transaction that destroys their keys). Its copy's
    retention runs from the first of the events it `decides` (emits; noted in the transaction that
    emits them) or `consumes` (learns from others, on its own consumer group)."""

    sql: Path
    decides: frozenset[str] = frozenset()
    consumes: frozenset[str] = CLOSING_TOPICS

    @property
    def closes_on(self) -> frozenset[str]:
        """The closing topics it subscribes to."""
        return self.consumes - self.decides

    def erase_cases(self) -> Any:
        return _queries(self.sql).erase_cases


@cache
def _queries(sql: Path) -> Any:
    return load_queries(sql)


async def note_closed(events: list[Envelope[Any]], uow: UnitOfWork) -> None:
    """A run of closing events: each case's first closing is kept, with the topic that closed it."""
    closed: dict[UUID, str] = {}
    for event in events:
        if (case_id := getattr(event.data, "case_id", None)) is not None:
            closed.setdefault(case_id, event.type)
    await uow.close_for_erasure(closed)


async def erase_due(
    connection: Connection, runtime_queries: Any, retention: Retention, *, days: int, limit: int
) -> int:
    """One batch of the cases due for erasure, erased in one transaction; how many."""
    async with connection.transaction():
        due = [row["case_id"] for row in await fetch_all(
            runtime_queries.due_for_erasure(connection, days=days, limit=limit)
        )]  # fmt: skip
        late = [row["case_id"] for row in await fetch_all(
            runtime_queries.erased_with_live_keys(connection, limit=limit)
        )]  # fmt: skip
        due = list(dict.fromkeys([*due, *late]))
        if due:
            await retention.erase_cases()(connection, case_ids=due)
            await runtime_queries.destroy_case_keys(connection, case_ids=due)
    if due:
        metrics.ERASED_CASES.inc(len(due))
        logger.info("retention.erased", cases=len(due))
    return len(due)


async def backlog(connection: Connection, runtime_queries: Any, *, days: int) -> dict[str, int]:
    """Closed cases due for erasure now, closed and not yet due, and erased."""
    row = await runtime_queries.erasure_backlog(connection, days=days)
    return {"due": row["due"], "waiting": row["waiting"], "erased": row["erased"]}


@dataclass
class RetentionSweeper:
    """The periodic sweep in each service that keeps personal data."""

    pool: asyncpg.Pool
    runtime_queries: Any
    retention: Retention
    days: int
    batch_size_max: int

    async def sweep(self) -> int:
        async with self.pool.acquire() as connection:
            return await erase_due(
                connection, self.runtime_queries, self.retention, days=self.days, limit=self.batch_size_max
            )
