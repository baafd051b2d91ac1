"""The sandbox travel provider as its own process, and travel's HTTP adapter against it: one
ticket per idempotency key, kept across a restart, no traveller's name in its store, clear errors."""

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from services.travel.adapters.provider import (
    BookingItem,
    HttpTravelProvider,
    PermanentProviderError,
    Ticket,
    TransientProviderError,
)
from tests.support import TravelSandbox

pytestmark = pytest.mark.integration

TRAVELER = "Ana Canary-Reyes"
ROUTE = {"origin_airport": "IAH", "destination_airport": "TGU"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("travel-sandbox") / "travel.sqlite3"


@pytest.fixture(scope="module")
def sandbox(store: Path) -> Iterator[TravelSandbox]:
    running = TravelSandbox(store, HOMEWARD_SANDBOX_FLIGHT_DURATION_SECONDS="14400")
    running.start()
    yield running
    running.stop()


def adapter(url: str, attempts: int = 2) -> HttpTravelProvider:
    return HttpTravelProvider(url, timeout_seconds=5, attempts_max=attempts, backoff_initial_seconds=0.01)


async def test_one_ticket_per_key_however_often_it_is_asked(sandbox: TravelSandbox):
    key = str(uuid4())
    provider = adapter(sandbox.url)
    try:
        first = await provider.book(idempotency_key=key, traveler_name=TRAVELER, **ROUTE)
        again = await provider.book(idempotency_key=key, traveler_name=TRAVELER, **ROUTE)
    finally:
        await provider.close()
    assert first == again
    assert (first.origin_airport, first.destination_airport) == ("IAH", "TGU")
    assert (first.scheduled_arrival - first.scheduled_departure).total_seconds() == 14400
    assert first.flight_number.startswith(first.carrier)


async def test_a_batch_books_each_key_once_and_refuses_a_bad_item_alone(sandbox: TravelSandbox):
    keys = [str(uuid4()) for _ in range(3)]
    items = [BookingItem(key, TRAVELER, "IAH", "TGU") for key in keys]
    bad = BookingItem(str(uuid4()), TRAVELER, "houston", "TGU")
    reused = BookingItem(keys[0], TRAVELER, "IAH", "GUA")
    provider = adapter(sandbox.url)
    try:
        first = await provider.book_batch([*items, bad])
        again = await provider.book_batch([reused, *items[1:]])
        single = await provider.book(idempotency_key=keys[1], traveler_name=TRAVELER, **ROUTE)
    finally:
        await provider.close()
    assert [type(first[key]) for key in keys] == [Ticket] * 3
    assert isinstance(first[bad.key], PermanentProviderError) and "invalid_item" in str(first[bad.key])
    assert "houston" not in str(first[bad.key])
    # A batch of keys already booked answers the same tickets, whichever way they are asked;
    # the key asked for another route is refused, and its ticket does not change.
    assert isinstance(again[keys[0]], PermanentProviderError) and "idempotency_key_reused" in str(again[keys[0]])
    assert [again[key] for key in keys[1:]] == [first[key] for key in keys[1:]] == [single, first[keys[2]]]


async def test_bad_requests_are_answered_with_a_code(sandbox: TravelSandbox):
    body = {"traveler_name": TRAVELER, **ROUTE}
    async with httpx.AsyncClient(base_url=sandbox.url) as client:
        missing = await client.post("/bookings", json=body)
        invalid = await client.post(
            "/bookings", json={**body, "origin_airport": "houston"}, headers={"Idempotency-Key": "k"}
        )
        key = str(uuid4())
        await client.post("/bookings", json=body, headers={"Idempotency-Key": key})
        reused = await client.post("/bookings", json={**body, "destination_airport": "GUA"},
                                   headers={"Idempotency-Key": key})  # fmt: skip
        unknown = await client.get(f"/bookings/{uuid4()}")
    assert (missing.status_code, missing.json()["error"]) == (400, "missing_idempotency_key")
    assert (invalid.status_code, invalid.json()["field"]) == (422, "origin_airport")
    assert "houston" not in invalid.text
    assert (reused.status_code, reused.json()["error"]) == (422, "idempotency_key_reused")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")


async def test_a_refusal_is_permanent_for_the_adapter(sandbox: TravelSandbox):
    provider = adapter(sandbox.url)
    try:
        with pytest.raises(PermanentProviderError, match="422 invalid_request"):
            await provider.book(idempotency_key=str(uuid4()), traveler_name="", **ROUTE)
    finally:
        await provider.close()


async def test_an_unreachable_provider_is_transient_after_the_bounded_tries():
    from services.devstack.embedded import free_port

    provider = adapter(f"http://127.0.0.1:{free_port()}", attempts=3)
    try:
        with pytest.raises(TransientProviderError, match="unreachable"):
            await provider.book(idempotency_key=str(uuid4()), traveler_name=TRAVELER, **ROUTE)
    finally:
        await provider.close()


async def test_tickets_survive_a_restart_and_names_are_never_stored(store: Path, sandbox: TravelSandbox):
    key = str(uuid4())
    async with httpx.AsyncClient(base_url=sandbox.url) as client:
        issued = (await client.post("/bookings", json={"traveler_name": TRAVELER, **ROUTE},
                                    headers={"Idempotency-Key": key})).json()  # fmt: skip
    sandbox.stop()
    sandbox.start()
    async with httpx.AsyncClient(base_url=sandbox.url) as client:
        assert (await client.get(f"/bookings/{key}")).json() == issued
    stored = b"".join(path.read_bytes() for path in store.parent.glob(f"{store.name}*"))
    assert TRAVELER.encode() not in stored
    assert not any(TRAVELER in line for line in sandbox.lines)
