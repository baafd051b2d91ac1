"""The travel provider over HTTP (httpx), with bounded retries (stamina). The case id is the
booking's idempotency key, so asking again after a timeout can only return the same ticket.

Bookings go in batches (`POST /booking-batches`, each item with its own key); the single
`POST /bookings` stays for callers that book one at a time."""

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import httpx

from services.runtime.http import HttpProvider

# Why a booking was not made: the `reason` of travel.booking_failed.v1, a code and never the text
# of an exception or of the provider's answer (either could echo the traveller's name).
PROVIDER_UNREACHABLE = "provider_unreachable"
PROVIDER_FAILED = "provider_failed"
PROVIDER_ANSWER_UNREADABLE = "provider_answer_unreadable"
PROVIDER_REFUSED = "provider_refused"
PROVIDER_LEFT_BOOKING_OUT = "provider_left_booking_out"
TICKET_INVALID = "ticket_invalid"
ALREADY_DEPARTED = "already_departed"
"""The provider cannot cancel a ticket whose flight has left."""
BOOKING_NOT_FOUND = "booking_not_found"
TRAVELER_DATA_UNREADABLE = "traveler_data_unreadable"
_PROVIDER_CODE = re.compile(r"[a-z0-9_.-]{1,40}")
FARE_CURRENCY = re.compile(r"[A-Z]{3}")
FARE_MAX = Decimal("10000000000")
"""Fares fit travel's numeric(12,2)."""


class ProviderError(Exception):
    """A booking not made: `code` says why; the message adds detail for the logs (ids, statuses,
    field names and the provider's own error code, nothing the traveller gave)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


class TransientProviderError(ProviderError):
    """The provider could not answer now; the same request may succeed later."""


class PermanentProviderError(ProviderError):
    """The provider refused the request; retrying will not help."""


@dataclass(frozen=True)
class Ticket:
    booking_id: str
    carrier: str
    flight_number: str
    origin_airport: str
    destination_airport: str
    scheduled_departure: datetime
    scheduled_arrival: datetime
    fare_amount: Decimal | None = None
    """What the ticket cost, where the provider says (`fare_amount` and `fare_currency`)."""
    fare_currency: str | None = None


@dataclass(frozen=True)
class BookingItem:
    """One booking of a batch; the traveller's name goes to the provider and is never kept."""

    key: str
    traveler_name: str
    origin_airport: str
    destination_airport: str


BookingOutcome = Ticket | TransientProviderError | PermanentProviderError


class TravelProvider(Protocol):
    async def book(
        self, *, idempotency_key: str, traveler_name: str, origin_airport: str, destination_airport: str
    ) -> Ticket:
        """Issues one ticket per idempotency key; asking again returns the same ticket."""
        ...

    async def book_batch(self, items: list[BookingItem]) -> dict[str, BookingOutcome]:
        """`book` for every item in one call; an outcome for every key."""
        ...

    async def cancel(self, *, idempotency_key: str) -> None:
        """Cancels the ticket booked under the key; cancelling again is harmless. Raises
        TransientProviderError (try later) or PermanentProviderError (never: departed, unknown)."""
        ...


def _ticket(document: dict[str, Any]) -> Ticket:
    return Ticket(
        booking_id=document["booking_id"],
        carrier=document["carrier"],
        flight_number=document["flight_number"],
        origin_airport=document["origin_airport"],
        destination_airport=document["destination_airport"],
        scheduled_departure=datetime.fromisoformat(document["scheduled_departure"]),
        scheduled_arrival=datetime.fromisoformat(document["scheduled_arrival"]),
        **_fare(document),
    )


def _fare(document: dict[str, Any]) -> dict[str, Any]:
    """The ticket's fare, where the provider reports one that reads as money; else none (a fare
    is for the program's report, never a reason to refuse a ticket)."""
    amount, currency = document.get("fare_amount"), document.get("fare_currency")
    if not isinstance(amount, str) or not isinstance(currency, str) or not FARE_CURRENCY.fullmatch(currency):
        return {}
    try:
        value = Decimal(amount)
    except InvalidOperation:
        return {}
    if not value.is_finite() or value < 0 or value >= FARE_MAX or value != value.quantize(Decimal("0.01")):
        return {}
    return {"fare_amount": value, "fare_currency": currency}


class HttpTravelProvider(HttpProvider):
    """Books through the travel provider's API (the client and retries: `HttpProvider`)."""

    async def book_batch(self, items: list[BookingItem]) -> dict[str, BookingOutcome]:
        """Books every item once per key, as one batch; a batch that could not be answered is asked
        again whole (the keys make a repeat harmless), and after `attempts_max` tries every item
        gets the error."""
        try:
            async for attempt in self._retrying((TransientProviderError,)):
                with attempt:
                    return await self._post_batch(items)
        except TransientProviderError as error:
            return dict.fromkeys((item.key for item in items), error)
        raise AssertionError("stamina either returns or raises")  # pragma: no cover

    async def _post_batch(self, items: list[BookingItem]) -> dict[str, BookingOutcome]:
        body = {"items": [{"key": item.key, "traveler_name": item.traveler_name, "origin_airport": item.origin_airport,
                           "destination_airport": item.destination_airport} for item in items]}  # fmt: skip
        try:
            response = await self.client.post("/booking-batches", json=body)
        except httpx.TransportError as error:
            raise TransientProviderError(PROVIDER_UNREACHABLE, type(error).__name__) from error
        if response.status_code >= 500:
            raise TransientProviderError(PROVIDER_FAILED, f"status {response.status_code}")
        if response.status_code != 200:
            refusal = PermanentProviderError(
                PROVIDER_REFUSED, f"batch: status {response.status_code} {_code(response)}"
            )
            return dict.fromkeys((item.key for item in items), refusal)
        outcomes: dict[str, BookingOutcome] = {}
        for answer in response.json()["items"]:
            outcomes[answer["key"]] = _item_outcome(answer)
        return outcomes

    async def book(
        self, *, idempotency_key: str, traveler_name: str, origin_airport: str, destination_airport: str
    ) -> Ticket:
        """Books once per key. A timeout is retried like an outage: the key makes a repeat harmless.
        After `attempts_max` tries the error goes to the booking worker, which schedules the case again."""
        body = {"traveler_name": traveler_name, "origin_airport": origin_airport,
                "destination_airport": destination_airport}  # fmt: skip
        async for attempt in self._retrying((TransientProviderError,)):
            with attempt:
                return await self._post(idempotency_key, body)
        raise AssertionError("stamina either returns or raises")  # pragma: no cover

    async def _post(self, key: str, body: dict[str, str]) -> Ticket:
        try:
            response = await self.client.post("/bookings", json=body, headers={"Idempotency-Key": key})
        except httpx.TransportError as error:
            raise TransientProviderError(PROVIDER_UNREACHABLE, type(error).__name__) from error
        if response.status_code >= 500:
            raise TransientProviderError(PROVIDER_FAILED, f"status {response.status_code}")
        if response.status_code in (200, 201):
            try:
                return _ticket(response.json())
            except (ValueError, KeyError, TypeError) as error:
                # Asking again with the same key returns the same ticket, perhaps readable then.
                raise TransientProviderError(PROVIDER_ANSWER_UNREADABLE, type(error).__name__) from error
        raise PermanentProviderError(PROVIDER_REFUSED, f"status {response.status_code} {_code(response)}")

    async def cancel(self, *, idempotency_key: str) -> None:
        """Cancels once per key (`POST /bookings/{key}/cancellation`); an outage or a timeout is
        retried, as booking is, and a repeat of a cancellation that went through answers the same."""
        async for attempt in self._retrying((TransientProviderError,)):
            with attempt:
                return await self._post_cancellation(idempotency_key)
        raise AssertionError("stamina either returns or raises")  # pragma: no cover

    async def _post_cancellation(self, key: str) -> None:
        try:
            response = await self.client.post(f"/bookings/{key}/cancellation")
        except httpx.TransportError as error:
            raise TransientProviderError(PROVIDER_UNREACHABLE, type(error).__name__) from error
        if response.status_code >= 500:
            raise TransientProviderError(PROVIDER_FAILED, f"status {response.status_code}")
        if response.status_code == 200:
            return
        code = _code(response)
        if response.status_code == 404:
            raise PermanentProviderError(BOOKING_NOT_FOUND, f"status 404 {code}")
        if response.status_code == 409 and code == ALREADY_DEPARTED:
            raise PermanentProviderError(ALREADY_DEPARTED, "status 409")
        raise PermanentProviderError(PROVIDER_REFUSED, f"status {response.status_code} {code}")


def _item_outcome(answer: dict[str, Any]) -> BookingOutcome:
    if answer.get("outcome") not in ("created", "replayed"):
        return PermanentProviderError(PROVIDER_REFUSED, _token(answer.get("error")))
    try:
        return _ticket(answer["ticket"])
    except (ValueError, KeyError, TypeError) as error:
        # Asking again with the same key returns the same ticket, perhaps readable then.
        return TransientProviderError(PROVIDER_ANSWER_UNREADABLE, type(error).__name__)


def _token(value: object) -> str:
    """The provider's own error code, if it looks like one; anything else (free text) is left out."""
    return value if isinstance(value, str) and _PROVIDER_CODE.fullmatch(value) else "(no code)"


def _code(response: httpx.Response) -> str:
    try:
        return _token(response.json().get("error"))
    except ValueError:
        return ""
