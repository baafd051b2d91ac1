"""A case gets one verdict: the window sweeper and an evidence batch deciding it at once cannot
both emit one, and the sweeper looks only at bookings still undecided; a withdrawal and a
verification at once never both hold (contract v1.1)."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from contracts import attestation
from contracts.events import ArrivalAttested, ArrivalVerified, CaseWithdrawn, WithdrawalRefused, WithdrawalRequested
from contracts.registry import envelope_adapter
from services.arrival.app import SQL
from services.arrival.handlers import Policy, handle_evidence, handle_withdrawal_requested
from services.runtime.db import fetch_all, init_connection, load_queries, runtime_queries
from services.runtime.migrate import migrate
from services.runtime.uow import ServiceDatabase
from tests.conftest import Infra
from tests.integration.helpers import EVIDENCE, new_database, now, partner_office, until_waiting_on_a_lock
from tests.support import TEST_ATTESTATION_KEYS, envelope

pytestmark = [pytest.mark.integration]

WINDOW_SECONDS = 3600
UNATTESTED: dict[str, list[Any]] = {"attested_case_ids": [], "key_ids": [], "tokens": []}
"""`decide`'s attestations, none here."""


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[asyncpg.Pool]:
    url = new_database(infra, "arrival_decisions")
    await asyncio.to_thread(migrate, url, "arrival")
    created = await asyncpg.create_pool(url, server_settings={"search_path": "arrival"}, init=init_connection)
    try:
        yield created
    finally:
        await created.close()


async def booked_long_ago(pool: asyncpg.Pool) -> UUID:
    case_id, landed = uuid4(), now() - timedelta(seconds=2 * WINDOW_SECONDS)
    await pool.execute(
        "INSERT INTO cases (case_id, correlationid, destination_country, accepted_event_id) VALUES ($1, $2, 'HN', $3)",
        case_id, uuid4(), uuid4(),
    )  # fmt: skip
    await pool.execute(
        "INSERT INTO bookings (case_id, flight_number, scheduled_departure, scheduled_arrival, booked_event_id)"
        " VALUES ($1, 'XH1', $2, $3, $4)",
        case_id, landed - timedelta(hours=5), landed, uuid4(),
    )  # fmt: skip
    return case_id


async def test_the_second_of_two_decisions_decides_nothing(pool: asyncpg.Pool) -> None:
    queries = load_queries(SQL)
    case_id = await booked_long_ago(pool)
    expired = await fetch_all(queries.expired_cases(pool, window_seconds=WINDOW_SECONDS, limit=10))
    assert [row["case_id"] for row in expired] == [case_id]

    async with pool.acquire() as first, pool.acquire() as second:
        async with first.transaction():
            won = await fetch_all(
                queries.decide(first, case_ids=[case_id], outcome="verified", rules=["carrier_and_app"], **UNATTESTED)
            )
            # The other decides meanwhile; it waits for the first to commit, then finds the case taken.
            late = asyncio.create_task(
                fetch_all(queries.decide(second, case_ids=[case_id], outcome="rejected", rules=[None], **UNATTESTED))
            )
            await until_waiting_on_a_lock(pool, "the second decision to wait for the first")
            assert not late.done()
        lost = await late
    assert [row["case_id"] for row in won] == [case_id] and lost == []
    assert await pool.fetchval("SELECT outcome FROM outcomes WHERE case_id = $1", case_id) == "verified"
    assert await fetch_all(queries.expired_cases(pool, window_seconds=WINDOW_SECONDS, limit=10)) == []


# Contract v1.1: a withdrawal and a verification of one case, at once --------------------------------

RACES = 300
"""Cases whose withdrawal and verification run in two transactions at the same moment."""


def _envelopes(case_id: UUID, departure: Any) -> tuple[Any, Any]:
    evidence = partner_office(case_id, observed_at=departure + timedelta(seconds=90))
    withdrawal = {"request_id": str(uuid4()), "case_id": str(case_id), "requested_at": now().isoformat(),
                  "channel": "partner_office", "reason": "other"}  # fmt: skip
    return (
        envelope_adapter(EVIDENCE).validate_python(envelope(EVIDENCE, evidence)),
        envelope_adapter(WithdrawalRequested.TOPIC).validate_python(envelope(WithdrawalRequested.TOPIC, withdrawal)),
    )


async def test_a_withdrawal_and_a_verification_at_once_never_both_hold(pool: asyncpg.Pool) -> None:
    """The handlers themselves, each in its own transaction, started together for every case: the
    outcome's primary key lets exactly one hold. A withdrawn case emits no verification and no
    attestation; a verified one gets both, and its withdrawal is refused."""
    queries = load_queries(SQL)
    database = ServiceDatabase(pool, "arrival", runtime_queries())
    policy = Policy(timedelta(seconds=WINDOW_SECONDS), attestation.Signer(TEST_ATTESTATION_KEYS))
    won: Counter[str] = Counter()
    for _ in range(RACES):
        case_id, departure = uuid4(), now() + timedelta(minutes=2)  # leaving soon: both may still happen
        await pool.execute(
            "INSERT INTO cases (case_id, correlationid, destination_country, accepted_event_id, identity_key)"
            " VALUES ($1, $2, 'HN', $3, $4)", case_id, uuid4(), uuid4(), "a" * 64,
        )  # fmt: skip
        await pool.execute(
            "INSERT INTO bookings (case_id, flight_number, scheduled_departure, scheduled_arrival, booked_event_id)"
            " VALUES ($1, 'XH1', $2, $3, $4)", case_id, departure, departure + timedelta(minutes=1), uuid4(),
        )  # fmt: skip
        evidence, withdrawal = _envelopes(case_id, departure)
        start = asyncio.Event()

        async def verify() -> None:
            await start.wait()
            async with database.unit() as uow:
                await handle_evidence([evidence], uow, queries=queries, policy=policy)

        async def withdraw() -> None:
            await start.wait()
            async with database.unit() as uow:
                await handle_withdrawal_requested([withdrawal], uow, queries=queries)

        racing = [asyncio.create_task(verify()), asyncio.create_task(withdraw())]
        start.set()
        await asyncio.gather(*racing)
        outcome = await pool.fetchval("SELECT outcome FROM outcomes WHERE case_id = $1", case_id)
        emitted = Counter(row["topic"] for row in await pool.fetch(
            "SELECT topic FROM outbox WHERE key = $1", str(case_id)
        ))  # fmt: skip
        if outcome == "withdrawn":
            assert emitted == {CaseWithdrawn.TOPIC: 1}, (case_id, emitted)
        else:
            assert outcome == "verified", case_id
            assert emitted == {ArrivalVerified.TOPIC: 1, ArrivalAttested.TOPIC: 1, WithdrawalRefused.TOPIC: 1}
            refusal = await pool.fetchval("SELECT decision FROM withdrawal_requests WHERE case_id = $1", case_id)
            assert refusal == "already_departed"
        won[outcome] += 1
    assert won.total() == RACES
    print(f"{RACES} races at once: {dict(won)}")  # shown with -s: how they fell
