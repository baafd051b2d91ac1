"""Thousands of stipends through a payout provider that fails on purpose: one request in ten is
answered 503 without paying, one in five is paid but answered only after the client has given up.
Every stipend must still be paid exactly once, and the ledger must agree with the provider.

The module runs its own sandbox (faults on, callbacks to its own disbursement), its own database
on the session's server, and its own disbursement process. That process joins the consumer group
"homeward-disbursement" like the other disbursement modules' processes, which have stopped by now
(module fixtures are torn down before the next module starts); whatever it reads of other modules'
events lands in this module's database, and the assertions look only at this module's cases.

HOMEWARD_TEST_FAULT_STIPENDS sets how many stipends to pay (default 2,000).
"""

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from services.devstack.embedded import free_port
from services.disbursement import domain
from tests.conftest import Infra
from tests.integration.helpers import (
    DISBURSED,
    STIPEND_FAILED,
    Collector,
    Outcomes,
    account,
    ledger_breaches,
    ledger_connection,
    logged_errors,
    new_database,
    pair,
    provider_payouts,
    publish_all,
    reconciliation,
)
from tests.support import PayoutSandbox, ServiceRunner, eventually, outbound_and_dlq_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STIPENDS = int(os.environ.get("HOMEWARD_TEST_FAULT_STIPENDS", "2000"))
PAID_WAIT_SECONDS = 240.0
PUBLISH_CHUNK = 500
HEALTH_TIMEOUT_SECONDS = 10.0
STIPEND = Decimal("1000.00")
FAULTS = {
    "HOMEWARD_SANDBOX_PAYOUT_AMBIGUOUS_RATE": "0.2",
    "HOMEWARD_SANDBOX_PAYOUT_ERROR_RATE": "0.1",
    "HOMEWARD_SANDBOX_PAYOUT_AMBIGUOUS_DELAY_MS": "1500",
    "HOMEWARD_SANDBOX_PAYOUT_SEED": "20250601",
}
IMPATIENT_PAYER = {
    "HOMEWARD_PAYOUT_TIMEOUT_MS": "500",
    "HOMEWARD_PAYOUT_BACKOFF_INITIAL_MS": "20",
    "HOMEWARD_WORKER_BATCH_SIZE_MAX": "200",
    # Small batches: many provider calls, so that the injected faults land (they are drawn per call).
    "HOMEWARD_PAYOUT_BATCH_ITEMS_MAX": "20",
}


@pytest.fixture(scope="module")
def callback_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def health_port() -> int:
    """Disbursement's /health and /metrics, apart from its callbacks."""
    return free_port()


@pytest.fixture(scope="module")
def faulty_provider(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory, callback_port: int
) -> Iterator[PayoutSandbox]:
    store: Path = tmp_path_factory.mktemp("faulty-payouts") / "payouts.sqlite3"
    sandbox = PayoutSandbox(
        store,
        HOMEWARD_PAYOUT_CALLBACK_URL=f"http://127.0.0.1:{callback_port}/callbacks/payouts",
        HOMEWARD_PAYOUT_CALLBACK_SECRET=infra.callback_secret,
        **FAULTS,
    )
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture(scope="module")
def fault_database_url(infra: Infra) -> str:
    return new_database(infra, "homeward_faults")


@pytest.fixture(scope="module")
def disbursement(
    infra: Infra, faulty_provider: PayoutSandbox, fault_database_url: str, callback_port: int, health_port: int
) -> Iterator[ServiceRunner]:
    runner = ServiceRunner(
        "disbursement",
        infra.service_env(
            "disbursement",
            HOMEWARD_DATABASE_URL=fault_database_url,
            HOMEWARD_PAYOUT_PROVIDER_URL=faulty_provider.url,
            HOMEWARD_HTTP_PORT=str(health_port),
            HOMEWARD_CALLBACK_PORT=str(callback_port),
            **IMPATIENT_PAYER,
        ),
    )
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


@pytest.mark.timeout(PAID_WAIT_SECONDS + 300)
async def test_every_stipend_is_paid_exactly_once_through_a_faulty_provider(
    infra: Infra,
    faulty_provider: PayoutSandbox,
    fault_database_url: str,
    health_port: int,
    disbursement: ServiceRunner,
):
    cases = [uuid4() for _ in range(STIPENDS)]
    started = time.monotonic()
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        outcomes = Outcomes(kafka, cases)
        for first in range(0, STIPENDS, PUBLISH_CHUNK):
            await publish_all(
                kafka, [record for case_id in cases[first : first + PUBLISH_CHUNK] for record in pair(infra, case_id)]
            )
        published = time.monotonic() - started
        try:
            await eventually(
                lambda: outcomes.decided() == STIPENDS, timeout=PAID_WAIT_SECONDS, what=f"{STIPENDS} stipends decided"
            )
        except AssertionError as timeout:
            decided = outcomes.of(DISBURSED).keys() | outcomes.of(STIPEND_FAILED).keys()
            undecided = [case_id for case_id in cases if str(case_id) not in decided]
            raise AssertionError(
                f"{timeout}: {len(outcomes.of(DISBURSED))} paid after {time.monotonic() - started:.0f} s; "
                f"service errors: {logged_errors(disbursement)[-3:]}; "
                f"where the undecided stand: {await where_they_stand(fault_database_url, undecided)}"
            ) from None
        elapsed = time.monotonic() - started
        paid, failed = outcomes.of(DISBURSED), outcomes.of(STIPEND_FAILED)
    injected = injected_faults(faulty_provider)
    print(
        f"\n{STIPENDS} stipends through the faulty provider ({injected}): published in {published:.1f} s, "
        f"all paid after {elapsed:.1f} s ({STIPENDS / elapsed:.0f} stipends/s)"
    )
    assert injected["error"] > 0 and injected["ambiguous"] > 0, "the provider was meant to fail, and did not"

    assert failed == {}
    assert len(paid) == STIPENDS
    assert all(len(events) == 1 for events in paid.values())
    payouts = await provider_payouts(faulty_provider.url)
    mine = {str(domain.payment_id_for(case_id)) for case_id in cases}
    keys = [payout.key for payout in payouts if payout.key in mine]
    assert len(keys) == len(set(keys)) == STIPENDS
    assert {payout.status for payout in payouts if payout.key in mine} == {"paid"}
    assert {event["data"]["provider_ref"] for [event] in paid.values()} == {
        payout.provider_ref for payout in payouts if payout.key in mine
    }
    assert await ledger_breaches(fault_database_url, faulty_provider.url) == []
    report = await reconciliation(fault_database_url, faulty_provider.url)
    assert report.clean, report
    async with ledger_connection(fault_database_url) as ledger:
        stipends_paid = await account(ledger, domain.STIPENDS_ACCOUNT)
        unresolved = await ledger.fetchval("SELECT count(*) FROM payments WHERE status <> 'disbursed'")
    assert (stipends_paid.credits_posted, stipends_paid.credits_pending) == (STIPEND * STIPENDS, Decimal(0))
    assert unresolved == 0
    # The provider's own callbacks reach this disbursement's endpoint, and every one verifies.
    callbacks = await eventually(lambda: callback_health(health_port), what="a callback applied")
    assert callbacks["callbacks_refused"] == {}


UNDECIDED_SHOWN_MAX = 5


async def where_they_stand(database_url: str, case_ids: list[UUID]) -> list[dict[str, Any]]:
    """Disbursement's own records of (some of) the undecided cases, to tell a lost event from a
    stuck payment or an unpublished decision."""
    async with ledger_connection(database_url) as ledger:
        rows = await ledger.fetch(
            """SELECT asked.case_id, c.case_id IS NOT NULL AS accepted, v.case_id IS NOT NULL AS verified,
                      p.status, p.hold_reason, p.payout_attempts, p.last_error, p.leased_until, p.updated_at,
                      (SELECT array_agg(o.topic || CASE WHEN o.sent_at IS NULL THEN ' unsent' ELSE ' sent' END)
                       FROM outbox o WHERE o.key = asked.case_id::text) AS outbox
               FROM unnest($1::uuid[]) AS asked (case_id)
               LEFT JOIN cases c USING (case_id) LEFT JOIN verified_arrivals v USING (case_id)
               LEFT JOIN payments p USING (case_id)""",
            case_ids[:UNDECIDED_SHOWN_MAX],
        )
    return [dict(row) for row in rows]


async def callback_health(port: int) -> dict[str, Any] | None:
    async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_SECONDS) as client:
        response = await client.get(f"http://127.0.0.1:{port}/health")
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document if document["callbacks_applied"] > 0 else None


def injected_faults(sandbox: PayoutSandbox) -> Counter[str]:
    """How many faults the sandbox injected, by kind, from its own log."""
    injected: Counter[str] = Counter()
    for line in sandbox.lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "payout.fault_injected":
            injected[entry["fault"]] += 1
    return injected
