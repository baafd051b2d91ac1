"""Disbursement with a small budget: a stipend that does not fit is held, then paid after an
operator tops the budget up with `homeward ledger fund`.

The budget is funded once per database by the service's first start, so this module gives the
process a database of its own (on the same server) with a budget of one and a half stipends, and
an HTTP port of its own. It shares the consumer group "homeward-disbursement" with
test_disbursement.py, whose process has stopped by now and committed its offsets, so this one
sees only the events published here. Joining the group again takes tansu a while, hence `slow`.
The session's payout sandbox sends its callbacks elsewhere; that is fine, because the answer to
the payout request already settles a stipend and callbacks only make it sooner.
"""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from services.devstack.embedded import free_port
from services.disbursement import domain, ledger
from tests.conftest import Infra
from tests.integration.helpers import (
    DISBURSED,
    HELD,
    Collector,
    account,
    ledger_breaches,
    ledger_connection,
    new_database,
    send_pair,
    start_service,
)
from tests.support import TEST_LEDGER_KEY, ServiceRunner, eventually, outbound_and_dlq_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("small_budget_disbursement")]

BUDGET = Decimal("1500.00")
STIPEND = Decimal("1000.00")
TOP_UP = Decimal("1000.00")
CLI_SECONDS_MAX = 60.0


@pytest.fixture(scope="module")
def budget_database_url(infra: Infra) -> str:
    return new_database(infra, "homeward_budget")


@pytest.fixture(scope="module")
def small_budget_disbursement(infra: Infra, budget_database_url: str) -> Iterator[ServiceRunner]:
    yield from start_service(
        "disbursement",
        infra,
        HOMEWARD_DATABASE_URL=budget_database_url,
        HOMEWARD_PROGRAM_BUDGET=str(BUDGET),
        HOMEWARD_HTTP_PORT=str(free_port()),
    )


@pytest.fixture
async def budget_ledger(budget_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with ledger_connection(budget_database_url) as connection:
        yield connection


@dataclass(frozen=True)
class Command:
    code: int
    document: Any
    stray: list[str]
    """Lines printed before the JSON document; a script reading --json output needs there to be none."""


async def homeward_ledger(
    infra: Infra, database_url: str, *arguments: str, group: str = "ledger", operator: str = "test-operator"
) -> Command:
    """Runs `homeward ledger … --json` (or another group's command) as an operator's script would,
    against this module's database."""
    env = {
        **os.environ,
        "HOMEWARD_DATABASE_URL": database_url,
        "HOMEWARD_PAYOUT_PROVIDER_URL": infra.payouts_url,
        "HOMEWARD_OPERATOR": operator,
        # The key the disbursement under test chains the journal with: a top-up appends to it.
        "HOMEWARD_LEDGER_KEY": TEST_LEDGER_KEY,
    }
    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.ops.cli", group, *arguments, "--json"],
        env=env, capture_output=True, text=True, timeout=CLI_SECONDS_MAX, check=False,
    )  # fmt: skip
    lines = completed.stdout.splitlines()
    start = next((n for n, line in enumerate(lines) if line.startswith(("{", "["))), None)
    if start is None and completed.returncode != 0:
        return Command(completed.returncode, None, lines)  # refused: the reason is on stderr
    if start is None:
        raise AssertionError(f"no JSON on stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}")
    return Command(completed.returncode, json.loads("\n".join(lines[start:])), lines[:start])


async def fund(infra: Infra, database_url: str, amount: str, reference: str) -> Command:
    """A top-up as two operators make it: one asks (`ledger fund`), another approves; the answer
    to the request where there is nothing to approve (made already, or refused)."""
    asked = await homeward_ledger(infra, database_url, "fund", "--amount", amount, "--reference", reference)
    if asked.document.get("status") != "requested":
        return asked
    assert asked.stray == [], "`homeward ledger fund --json` printed more than its JSON document"
    mine = await homeward_ledger(infra, database_url, "approve", asked.document["request_id"], group="approvals")
    assert mine.code == 1, "the operator who asked cannot approve"
    return await homeward_ledger(
        infra, database_url, "approve", asked.document["request_id"], group="approvals", operator="second-operator"
    )


async def balances(connection: asyncpg.Connection) -> dict[str, tuple[Decimal, ...]]:
    rows = await connection.fetch(
        "SELECT code, debits_pending, debits_posted, credits_pending, credits_posted FROM accounts"
    )
    return {row["code"]: tuple(row.values())[1:] for row in rows}


async def test_stipend_beyond_the_budget_is_held_then_paid_after_a_top_up(
    infra: Infra, budget_database_url: str, budget_ledger: asyncpg.Connection
):
    first, second = uuid4(), uuid4()
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        await send_pair(kafka, infra, first)
        await eventually(lambda: kafka.events(DISBURSED, case_id=str(first)), what="the first stipend")
        proven = await send_pair(kafka, infra, second)
        [held] = await eventually(lambda: kafka.events(HELD, case_id=str(second)), what="the second stipend held")

        assert held["data"]["reason"] == domain.HELD_BUDGET_EXHAUSTED
        assert held["causationid"] == proven["id"]
        assert await budget_ledger.fetchval("SELECT status FROM payments WHERE case_id = $1", second) == "held"
        assert (await account(budget_ledger, domain.BUDGET_ACCOUNT)).available == BUDGET - STIPEND
        assert kafka.events(DISBURSED, case_id=str(second)) == []

        topped = await fund(infra, budget_database_url, "1000", "t1")
        assert topped.code == 0, topped
        done = topped.document
        assert (done["status"], done["transfer_id"], done["amount"]) == ("created", "fund:t1", "1000.00")
        # The service's own release worker may reserve the held stipend before the command does.
        assert done["held_released"] in (0, 1)
        [paid] = await eventually(lambda: kafka.events(DISBURSED, case_id=str(second)), what="the held stipend paid")

    assert paid["data"]["payment_id"] == held["data"]["payment_id"] == str(domain.payment_id_for(second))
    assert paid["data"]["amount"] == "1000.00"
    budget = await account(budget_ledger, domain.BUDGET_ACCOUNT)
    assert (budget.credits_posted, budget.debits_posted, budget.debits_pending) == (
        BUDGET + TOP_UP,
        2 * STIPEND,
        Decimal(0),
    )
    assert (await account(budget_ledger, domain.STIPENDS_ACCOUNT)).credits_posted == 2 * STIPEND
    assert await ledger_breaches(budget_database_url, infra.payouts_url) == []
    await _the_same_top_up_again_moves_nothing(infra, budget_database_url, budget_ledger)
    await _the_same_reference_with_another_amount_is_refused(infra, budget_database_url, budget_ledger)
    assert topped.stray == [], "`homeward ledger fund --json` printed more than its JSON document"


async def _the_same_top_up_again_moves_nothing(infra: Infra, database_url: str, connection: asyncpg.Connection):
    before = await balances(connection)
    again = await fund(infra, database_url, "1000", "t1")
    assert again.code == 0, again
    assert (again.document["status"], again.document["held_released"]) == ("exists", 0)
    assert await balances(connection) == before
    transfers = await connection.fetchval("SELECT count(*) FROM transfers WHERE transfer_id = 'fund:t1'")
    assert transfers == 1


async def _the_same_reference_with_another_amount_is_refused(
    infra: Infra, database_url: str, connection: asyncpg.Connection
):
    before = await balances(connection)
    refused = await fund(infra, database_url, "2000", "t1")
    assert refused.code == 1
    assert (refused.document["status"], refused.document["code"], refused.document["field"]) == (
        "refused",
        ledger.ID_REUSED,
        "amount",
    )
    assert await balances(connection) == before


async def test_operator_verify_reports_the_ledger_sound(infra: Infra, budget_database_url: str):
    verified = await homeward_ledger(infra, budget_database_url, "verify")
    assert (verified.code, verified.document, verified.stray) == (0, {"clean": True, "breaches": []}, [])


async def test_a_second_top_up_releases_held_stipends_oldest_first(
    infra: Infra, budget_database_url: str, budget_ledger: asyncpg.Connection
):
    # Three stipends wait; the top-up makes room for exactly two, and the third stays held until it
    # can be paid in full.
    cases = [uuid4(), uuid4(), uuid4()]
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        for case_id in cases:
            await send_pair(kafka, infra, case_id)
            await eventually(said(kafka, HELD, case_id), what=f"{case_id} held")
        room = 2 * STIPEND - (await account(budget_ledger, domain.BUDGET_ACCOUNT)).available
        topped = await fund(infra, budget_database_url, f"{room:.2f}", f"t2-{uuid4().hex[:6]}")
        assert (topped.code, topped.document["status"]) == (0, "created")
        for case_id in cases[:2]:
            await eventually(said(kafka, DISBURSED, case_id), what=f"{case_id} paid")

    assert await status_of(budget_ledger, cases) == ["disbursed", "disbursed", "held"]
    assert (await account(budget_ledger, domain.BUDGET_ACCOUNT)).available == 0
    assert await ledger_breaches(budget_database_url, infra.payouts_url) == []
    assert topped.stray == [], "`homeward ledger fund --json` printed more than its JSON document"


def said(kafka: Collector, topic: str, case_id: UUID) -> Callable[[], list[dict[str, Any]]]:
    return lambda: kafka.events(topic, case_id=str(case_id))


async def status_of(connection: asyncpg.Connection, cases: list[UUID]) -> list[str]:
    return [await connection.fetchval("SELECT status FROM payments WHERE case_id = $1", case) for case in cases]
