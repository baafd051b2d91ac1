"""One booking attempt, with a fake provider: what the worker settles for the case. A ticket
that breaks the contract fails its own case (as a retryable error), never the whole pass."""

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from contracts.events import TravelBooked
from services.runtime import crypto
from services.travel.adapters.provider import Ticket, TransientProviderError
from services.travel.handlers import BookingWorker, RetryPolicy

KEY = bytes.fromhex(crypto.new_key_hex())
POLICY = RetryPolicy(attempts_max=3, backoff_base_ms=10, backoff_max_ms=50, call_seconds_max=5, lease_margin_seconds=30)


class FakeProvider:
    def __init__(self, carrier: str) -> None:
        self.carrier = carrier

    async def book(self, **request: str) -> Ticket:
        departure = datetime.now(UTC)
        return Ticket("SBX-1", self.carrier, f"{self.carrier}123", request["origin_airport"],
                      request["destination_airport"], departure, departure + timedelta(hours=4))  # fmt: skip


def worker(provider: FakeProvider) -> BookingWorker:
    return BookingWorker(pool=None, queries=None, runtime_queries=None, provider=provider, data_key=KEY,  # type: ignore[arg-type]
                         policy=POLICY, batch_size_max=200, concurrency_max=32, rng=random.Random(1))  # fmt: skip


def request() -> dict[str, Any]:
    case_id = uuid4()
    traveler = {"given_name": "Ana", "family_name": "Reyes"}
    return {"case_id": case_id, "sealed": crypto.seal(KEY, traveler, bound_to=str(case_id)),
            "origin_airport": "IAH", "destination_airport": "TGU"}  # fmt: skip


async def test_a_ticket_becomes_the_booked_event():
    outcome = await worker(FakeProvider("XH"))._attempt(request(), asyncio.Semaphore(1))
    assert isinstance(outcome, TravelBooked) and outcome.carrier == "XH"


async def test_a_ticket_that_breaks_the_contract_is_a_retryable_failure_of_its_case():
    outcome = await worker(FakeProvider("not a carrier"))._attempt(request(), asyncio.Semaphore(1))
    assert isinstance(outcome, TransientProviderError)
    assert "carrier" in str(outcome) and "not a carrier" not in str(outcome)


def test_the_lease_covers_a_whole_pass():
    # 200 requests, 32 at a time: 7 waves of calls of up to 5 s each, plus the margin.
    assert worker(FakeProvider("XH")).lease_seconds() == 7 * 5 + 30
