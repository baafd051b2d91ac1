"""Contract v1.1 payment holds, against the real broker and PostgreSQL: a payout instrument shared
by two identities waits for two operators (released, or refused as `review_refused`); 50 cases
sharing one instrument at once pay one; the program pause holds what becomes due and resume pays it.

Like test_disbursement_budget.py, this module runs a disbursement of its own, on a database of its
own, sharing the consumer group "homeward-disbursement" (hence `slow`)."""

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from services.devstack.embedded import free_port
from services.disbursement import domain, stipends
from services.disbursement.app import queries
from services.disbursement.handlers import Program, handle_accepted, handle_verified
from services.disbursement.ledger import ChainKey
from services.runtime.db import init_connection, runtime_queries
from services.runtime.migrate import migrate
from services.runtime.uow import ServiceDatabase
from tests.conftest import Infra
from tests.integration.helpers import (
    ACCEPTED,
    DISBURSED,
    HELD,
    STIPEND_FAILED,
    VERIFIED,
    Collector,
    accepted,
    ledger_breaches,
    new_database,
    own_wallet,
    provider_payout,
    publish_all,
    send_pair,
    start_service,
    verified,
)
from tests.support import (
    TEST_INSTRUMENT_SECRET,
    TEST_LEDGER_KEY,
    ServiceRunner,
    envelope,
    eventually,
    homeward_cli,
    outbound_and_dlq_topics,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("disbursement")]

SHARING = 50
"""Cases of distinct identities paid to one wallet, at once."""


@pytest.fixture(scope="module")
def database_url(infra: Infra) -> str:
    return new_database(infra, "homeward_review")


@pytest.fixture(scope="module")
def disbursement(infra: Infra, database_url: str) -> Iterator[ServiceRunner]:
    yield from start_service("disbursement", infra, HOMEWARD_DATABASE_URL=database_url,
                             HOMEWARD_HTTP_PORT=str(free_port()))  # fmt: skip


def homeward(infra: Infra, database_url: str, *arguments: str, operator: str | None = None) -> Any:
    """An operator's command against this module's database; its JSON document, or the run itself."""
    settings = {"HOMEWARD_DATABASE_URL": database_url, "HOMEWARD_LEDGER_KEY": TEST_LEDGER_KEY}
    if operator is not None:
        settings["HOMEWARD_OPERATOR"] = operator
    return homeward_cli(*arguments, **settings)


def document(run: Any) -> Any:
    assert run.returncode == 0, f"{run.args}: {run.stdout}{run.stderr}"
    return json.loads(run.stdout)


def request_id(run: Any) -> str:
    assert run.returncode == 0, run.stderr
    return run.stdout.split()[1]  # "request <id> (release) waits for another operator: …"


async def paused_states(database_url: str, payment_ids: list[str]) -> list[tuple[str, str]]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT status, hold_reason FROM disbursement.payments WHERE payment_id = ANY($1::uuid[])", payment_ids
        )
    finally:
        await connection.close()
    return [(row["status"], row["hold_reason"]) for row in rows]


async def held_for_review(kafka: Collector, case_id: UUID) -> dict[str, Any]:
    [held] = await eventually(lambda: kafka.events(HELD, case_id=str(case_id)), what=f"{case_id} held")
    return held


async def paid_then_shared(kafka: Collector, infra: Infra) -> tuple[UUID, str]:
    """A case paid to a new wallet, then another identity's case paid to it: held for review.
    Returns the second case and its payment."""
    shared, first, second = own_wallet(), uuid4(), uuid4()
    await send_pair(kafka, infra, first, payout=shared)
    await eventually(lambda: kafka.events(DISBURSED, case_id=str(first)), what="the first stipend")
    await send_pair(kafka, infra, second, payout=shared)
    return second, (await held_for_review(kafka, second))["data"]["payment_id"]


async def test_a_shared_instrument_waits_for_two_operators_then_pays(infra: Infra, database_url: str):
    shared = own_wallet()
    first, second, third = uuid4(), uuid4(), uuid4()
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        await send_pair(kafka, infra, first, payout=shared)
        await eventually(lambda: kafka.events(DISBURSED, case_id=str(first)), what="the first stipend")
        await send_pair(kafka, infra, second, payout=shared)
        await send_pair(kafka, infra, third, payout={**shared, "msisdn": shared["msisdn"]})  # written the same
        held = await held_for_review(kafka, second)
        await held_for_review(kafka, third)
        listed = document(homeward(infra, database_url, "review", "list", "--json"))
        payment = held["data"]["payment_id"]

        asked = homeward(infra, database_url, "review", "release", payment, operator="ana")
        request = request_id(asked)
        again = homeward(infra, database_url, "review", "release", payment, operator="ben")
        own = homeward(infra, database_url, "approvals", "approve", request, operator="ana")
        waiting = document(homeward(infra, database_url, "approvals", "list", "--json"))
        approved = document(homeward(infra, database_url, "approvals", "approve", request, "--json", operator="ben"))
        [paid] = await eventually(lambda: kafka.events(DISBURSED, case_id=str(second)), what="the released stipend")
        twice = homeward(infra, database_url, "approvals", "approve", request, operator="cy")

    assert held["data"]["reason"] == domain.HELD_INSTRUMENT_SHARED
    assert {row["payment_id"] for row in listed} >= {payment, str(domain.payment_id_for(third))}
    assert again.returncode == 1 and "open" in again.stderr, "one open request per payment"
    assert own.returncode == 1 and "another operator" in own.stderr, "the requester cannot approve"
    assert [row["request_id"] for row in waiting] == [request]
    assert (approved["action"], approved["requested_by"], approved["approved_by"]) == ("release", "ana", "ben")
    assert approved["status"] == "reserved" and paid["data"]["payment_id"] == payment
    assert twice.returncode == 1 and "approved already" in twice.stderr
    trail = document(homeward(infra, database_url, "audit", "list", "--json"))
    commands = [(line["operator"], line["command"]) for line in trail]
    assert ("ana", "review release request") in commands and ("ben", "approvals approve") in commands
    assert await ledger_breaches(database_url, infra.payouts_url) == []


async def test_a_refused_review_fails_the_stipend_and_never_pays(infra: Infra, database_url: str):
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        second, payment = await paid_then_shared(kafka, infra)
        asked = homeward(infra, database_url, "review", "refuse", payment, "--reason", "same wallet", operator="ana")
        document(homeward(infra, database_url, "approvals", "approve", request_id(asked), "--json", operator="ben"))
        [failed] = await eventually(lambda: kafka.events(STIPEND_FAILED, case_id=str(second)), what="the refusal")
    assert failed["data"]["reason"] == domain.FAILED_REVIEW_REFUSED
    assert await provider_payout(infra.payouts_url, payment) is None, "never sent to the provider"


async def test_a_declined_request_changes_nothing_and_can_be_asked_again(infra: Infra, database_url: str):
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        _, payment = await paid_then_shared(kafka, infra)
    asked = request_id(homeward(infra, database_url, "review", "release", payment, operator="ana"))
    declined = homeward(infra, database_url, "approvals", "decline", asked, "--reason", "wrong one", operator="ben")
    late = homeward(infra, database_url, "approvals", "approve", asked, operator="cy")
    listed = document(homeward(infra, database_url, "review", "list", "--json"))
    again = homeward(infra, database_url, "review", "release", payment, operator="ana")
    assert declined.returncode == 0, declined.stderr
    assert late.returncode == 1 and "declined" in late.stderr
    assert [row["request_id"] for row in listed if row["payment_id"] == payment] == [None], "held, no open request"
    assert again.returncode == 0, "a declined request no longer blocks a new one"


async def test_fifty_cases_sharing_one_wallet_at_once_pay_one(infra: Infra, database_url: str):
    shared = own_wallet()
    cases = [uuid4() for _ in range(SHARING)]
    messages: list[tuple[str, dict[str, Any], str]] = []
    for case_id in cases:
        messages.append((ACCEPTED, envelope(ACCEPTED, accepted(infra, case_id=case_id, payout=shared)), str(case_id)))
        messages.append((VERIFIED, envelope(VERIFIED, verified(case_id)), str(case_id)))
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        await publish_all(kafka, messages)

        def outcomes() -> tuple[int, int] | None:
            paid = sum(bool(kafka.events(DISBURSED, case_id=str(case_id))) for case_id in cases)
            held = sum(bool(kafka.events(HELD, case_id=str(case_id))) for case_id in cases)
            return (paid, held) if paid + held == SHARING else None

        counted = await eventually(outcomes, what="every case paid or held")
    assert counted == (1, SHARING - 1)


async def test_the_pause_holds_what_becomes_due_and_resume_pays_it(infra: Infra, database_url: str):
    cases = [uuid4(), uuid4()]
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        paused = homeward(infra, database_url, "program", "pause", "--reason", "provider audit", operator="ana")
        assert paused.returncode == 0, paused.stderr
        status = document(homeward(infra, database_url, "program", "status", "--json"))
        for case_id in cases:
            await send_pair(kafka, infra, case_id)
        held = [await held_for_review(kafka, case_id) for case_id in cases]
        # Held, not reserved: the payout worker takes reserved payments only, so none can be sent.
        states = await paused_states(database_url, [event["data"]["payment_id"] for event in held])
        sent = [await provider_payout(infra.payouts_url, event["data"]["payment_id"]) for event in held]
        listed = document(homeward(infra, database_url, "review", "list", "--paused", "--json"))
        resumed = document(homeward(infra, database_url, "program", "resume", "--json", operator="ben"))
        for case_id in cases:
            await eventually(lambda case_id=case_id: kafka.events(DISBURSED, case_id=str(case_id)), what="paid")
    assert status["paused"] is True and status["reason"] == "provider audit" and status["changed_by"] == "ana"
    assert [event["data"]["reason"] for event in held] == [domain.HELD_PROGRAM_PAUSED] * 2
    assert states == [("held", domain.HELD_PROGRAM_PAUSED)] * 2
    assert sent == [None, None], "nothing went to the provider while paused"
    assert sorted(row["payment_id"] for row in listed) == sorted(event["data"]["payment_id"] for event in held)
    assert [row["updated_at"] for row in listed] == sorted(row["updated_at"] for row in listed), "oldest first"
    assert resumed["released"] == 2 and resumed["paused"] is False
    assert await ledger_breaches(database_url, infra.payouts_url) == []


async def test_ledger_fund_takes_two_operators(infra: Infra, database_url: str):
    reference = f"grant-{uuid4().hex[:8]}"
    asked = document(homeward(infra, database_url, "ledger", "fund", "--amount", "500.00", "--reference", reference,
                              "--json", operator="ana"))  # fmt: skip
    own = homeward(infra, database_url, "approvals", "approve", asked["request_id"], operator="ana")
    done = document(homeward(infra, database_url, "approvals", "approve", asked["request_id"], "--json",
                             operator="ben"))  # fmt: skip
    again = document(homeward(infra, database_url, "ledger", "fund", "--amount", "500.00", "--reference", reference,
                              "--json", operator="cy"))  # fmt: skip
    assert asked["status"] == "requested" and own.returncode == 1
    assert (done["status"], done["transfer_id"], done["amount"]) == ("created", f"fund:{reference}", "500.00")
    assert again["status"] == "exists", "the same top-up again changes nothing and needs nobody"


# The handlers at once, in transactions of their own ----------------------------------------------------


async def test_cases_sharing_a_wallet_in_concurrent_transactions_pay_one(infra: Infra):
    """50 verified cases of distinct identities, one wallet, each in a transaction of its own, all at
    once: the instrument claim's primary key lets one through; the others are held."""
    url = new_database(infra, "homeward_review_race")
    await asyncio.to_thread(migrate, url, "disbursement")
    pool = await asyncpg.create_pool(url, min_size=SHARING, max_size=SHARING, init=init_connection,
                                     server_settings={"search_path": "disbursement"})  # fmt: skip
    try:
        named = queries(ChainKey(bytes.fromhex(TEST_LEDGER_KEY)))
        async with pool.acquire() as connection, connection.transaction():
            await stipends.fund(connection, named, amount=Decimal("1000000.00"), currency="USD", reference="initial")
        database = ServiceDatabase(pool, "disbursement", runtime_queries())
        program = Program(Decimal("1000.00"), "USD", bytes.fromhex(TEST_INSTRUMENT_SECRET))
        shared, key = own_wallet(), infra.keyring("disbursement")
        cases = [uuid4() for _ in range(SHARING)]
        async with database.unit() as uow:
            opened = [envelope(ACCEPTED, accepted(infra, case_id=case_id, payout=shared)) for case_id in cases]
            await handle_accepted([_parsed(ACCEPTED, event) for event in opened], uow, queries=named, program=program,
                                  data_key=key)  # fmt: skip
        start = asyncio.Event()

        async def verify(case_id: UUID) -> None:
            await start.wait()
            async with database.unit() as uow:
                event = _parsed(VERIFIED, envelope(VERIFIED, verified(case_id)))
                await handle_verified([event], uow, queries=named, program=program)

        racing = [asyncio.create_task(verify(case_id)) for case_id in cases]
        start.set()
        await asyncio.gather(*racing)
        rows = await pool.fetch("SELECT status, hold_reason FROM payments")
    finally:
        await pool.close()
    assert sorted((row["status"], row["hold_reason"]) for row in rows) == sorted(
        [("reserved", None)] + [("held", domain.HELD_INSTRUMENT_SHARED)] * (SHARING - 1)
    )


def _parsed(topic: str, document: dict[str, Any]) -> Any:
    from contracts.registry import envelope_adapter

    return envelope_adapter(topic).validate_python(document)
