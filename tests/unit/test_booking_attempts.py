"""A pass's booking attempts, with a fake provider: what the worker settles for each case. A ticket
that breaks the contract fails its own case (as a retryable error), never the whole pass; the
provider is asked in batches of `batch_items_max`."""

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

from services.runtime import casekeys, crypto
from services.travel.adapters.provider import (
    BookingItem,
    BookingOutcome,
    PermanentProviderError,
    Ticket,
    TransientProviderError,
    _ticket,
)
from services.travel.handlers import DEFERRED, Booked, BookingWorker, RetryPolicy

KEY = crypto.Keyring(crypto.new_key())
POLICY = RetryPolicy(attempts_max=3, backoff_base_ms=10, backoff_max_ms=50, call_seconds_max=5, lease_margin_seconds=30)


class FakeProvider:
    def __init__(self, carrier: str, *, leaves_out: int = 0) -> None:
        self.carrier = carrier
        self.leaves_out = leaves_out
        self.batches: list[int] = []

    async def book(self, **request: str) -> Ticket:
        raise NotImplementedError

    async def book_batch(self, items: list[BookingItem]) -> dict[str, BookingOutcome]:
        self.batches.append(len(items))
        departure = datetime.now(UTC)
        return {
            item.key: Ticket("SBX-1", self.carrier, f"{self.carrier}123", item.origin_airport,
                             item.destination_airport, departure, departure + timedelta(hours=4),
                             fare_amount=Decimal("412.50"), fare_currency="USD")
            for item in items[self.leaves_out:]
        }  # fmt: skip


def worker(provider: FakeProvider, batch_items_max: int = 50) -> BookingWorker:
    return BookingWorker(database=None, queries=None, provider=provider, data_key=KEY,  # type: ignore[arg-type]
                         policy=POLICY, batch_size_max=200, batch_items_max=batch_items_max, concurrency_max=2,
                         rng=random.Random(1))  # fmt: skip


def request(sealed_for: Any = None) -> dict[str, Any]:
    """A claimed booking row: the traveler's ciphertext and its wrapped case key."""
    case_id = uuid4()
    traveler = {casekeys.TRAVELER: {"given_name": "Ana", "family_name": "Reyes"}}
    sealed = casekeys.seal_case({casekeys.TRAVELER: KEY}, traveler, case_id=str(sealed_for or case_id))
    part = casekeys.take(sealed, casekeys.TRAVELER)
    return {"case_id": case_id, "sealed": part.ciphertext, "case_key_id": part.key_id, "wrapped_key": part.wrapped,
            "origin_airport": "IAH", "destination_airport": "TGU"}  # fmt: skip


async def test_tickets_become_booked_events_asked_in_batches():
    provider = FakeProvider("XH")
    outcomes = await worker(provider, batch_items_max=2)._attempt_all([request() for _ in range(5)])
    assert all(isinstance(outcome, Booked) and outcome.event.carrier == "XH" for outcome in outcomes)
    assert all(isinstance(outcome, Booked) and outcome.fare_amount == Decimal("412.50") for outcome in outcomes)
    assert sorted(provider.batches) == [1, 2, 2]


async def test_a_ticket_that_breaks_the_contract_is_a_retryable_failure_of_its_case():
    [outcome] = await worker(FakeProvider("not a carrier"))._attempt_all([request()])
    assert isinstance(outcome, TransientProviderError)
    assert "carrier" in str(outcome) and "not a carrier" not in str(outcome)


async def test_an_unreadable_case_and_a_left_out_answer_fail_alone():
    unreadable, left_out, fine = request(sealed_for=uuid4()), request(), request()
    outcomes = await worker(FakeProvider("XH", leaves_out=1))._attempt_all([unreadable, left_out, fine])
    assert [type(outcome) for outcome in outcomes] == [PermanentProviderError, TransientProviderError, Booked]


def test_the_lease_covers_a_whole_pass():
    # 200 requests in batches of 50, 2 calls at a time: 2 waves of calls of up to 5 s each, plus the margin.
    assert worker(FakeProvider("XH")).lease_seconds() == 2 * 5 + 30


async def test_a_case_wrapped_by_a_key_this_worker_lacks_waits_instead_of_failing():
    stranger = crypto.Keyring(crypto.new_key())
    case_id = uuid4()
    sealed = casekeys.seal_case({casekeys.TRAVELER: stranger}, {casekeys.TRAVELER: {"given_name": "A"}},
                                case_id=str(case_id))  # fmt: skip
    part = casekeys.take(sealed, casekeys.TRAVELER)
    waiting = {"case_id": case_id, "sealed": part.ciphertext, "case_key_id": part.key_id, "wrapped_key": part.wrapped,
               "origin_airport": "IAH", "destination_airport": "TGU"}  # fmt: skip
    provider = FakeProvider("XH")
    outcomes = await worker(provider)._attempt_all([waiting, request()])
    assert outcomes[0] is DEFERRED, "no attempt counted, no failure: the request waits for its lease"
    assert isinstance(outcomes[1], Booked)


def test_a_fare_that_does_not_read_as_money_is_left_out_never_the_ticket():
    """The fare is for the program's report: an odd one is dropped and the ticket still counts."""
    ticket = {"booking_id": "SBX-1", "carrier": "XH", "flight_number": "XH1", "origin_airport": "IAH",
              "destination_airport": "TGU", "scheduled_departure": "2026-12-01T10:00:00+00:00",
              "scheduled_arrival": "2026-12-01T14:00:00+00:00"}  # fmt: skip
    assert _ticket(ticket | {"fare_amount": "412.50", "fare_currency": "USD"}).fare_amount == Decimal("412.50")
    odd = [{"fare_amount": 412.5, "fare_currency": "USD"}, {"fare_amount": "NaN", "fare_currency": "USD"},
           {"fare_amount": "-1.00", "fare_currency": "USD"}, {"fare_amount": "1.001", "fare_currency": "USD"},
           {"fare_amount": "1e30", "fare_currency": "USD"}, {"fare_amount": "10.00", "fare_currency": "usd"},
           {"fare_amount": "10.00"}, {}]  # fmt: skip
    for fare in odd:
        parsed = _ticket(ticket | fare)
        assert parsed.fare_amount is None and parsed.fare_currency is None and parsed.booking_id == "SBX-1"
