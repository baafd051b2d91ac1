"""The payout provider over HTTP (httpx), with bounded retries (stamina) and ambiguity resolved
by asking the provider before any new attempt: never a second payout.

Payouts go in batches (`POST /payout-batches`, each item with its own idempotency key); an
ambiguous batch is resolved by looking its keys up (`GET /payouts?keys=`) before anything is
sent again. The single `POST /payouts` stays for callers that pay one at a time."""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import httpx
import structlog

from services.runtime.http import HttpProvider

logger = structlog.get_logger("homeward.disbursement.provider")

PAYOUT_REFUSED = "payout_refused"
LOOKUP_KEYS_MAX = 200
"""Keys per `GET /payouts?keys=` (the sandbox's PAYOUT_LOOKUP_KEYS_MAX)."""


class PermanentPayoutError(Exception):
    """The payout cannot be made, now or later (refused by the provider, unreadable instrument).

    `code` is what `stipend.failed.v1` says; the message keeps the detail for operators."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


class ProviderUnavailableError(Exception):
    """The provider answered 5xx or could not be reached; nothing was paid."""


class AmbiguousPayoutError(Exception):
    """The request may have reached the provider, but no answer came: ask before trying again."""


@dataclass(frozen=True)
class Payout:
    key: str
    provider_ref: str
    status: str  # paid | declined | returned
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class PayoutItem:
    """One payout of a batch; the instrument is sent to the provider and never logged or kept."""

    key: str
    amount: Decimal
    currency: str
    method: str
    instrument: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {"amount": f"{self.amount:.2f}", "currency": self.currency, "method": self.method,
                "instrument": self.instrument, "reference": self.key}  # fmt: skip


ItemOutcome = Payout | PermanentPayoutError | ProviderUnavailableError | AmbiguousPayoutError
"""What became of one item: its payout, a refusal, or (still unknown) why nobody could tell."""


class PayoutProvider(Protocol):
    async def pay(
        self, *, key: str, amount: Decimal, currency: str, method: str, instrument: dict[str, Any], resolve_first: bool
    ) -> Payout: ...

    async def pay_batch(self, items: list[PayoutItem], *, resolve_first: set[str]) -> dict[str, ItemOutcome]: ...

    async def lookup(self, key: str) -> Payout | None: ...

    async def list_payouts(self) -> list[Payout]: ...


def _payout(document: dict[str, Any]) -> Payout:
    return Payout(
        key=document["key"],
        provider_ref=document["provider_ref"],
        status=document["status"],
        amount=Decimal(document["amount"]),
        currency=document["currency"],
    )


class HttpPayoutProvider(HttpProvider):
    """Pays through the payout provider's API (the client and retries: `HttpProvider`)."""

    async def pay(
        self, *, key: str, amount: Decimal, currency: str, method: str, instrument: dict[str, Any], resolve_first: bool
    ) -> Payout:
        """Pays once per key. After a timeout (now or on an earlier pass) it looks the key up first."""
        body = {"amount": f"{amount:.2f}", "currency": currency, "method": method, "instrument": instrument,
                "reference": key}  # fmt: skip
        ambiguous = resolve_first
        async for attempt in self._retrying((ProviderUnavailableError, AmbiguousPayoutError)):
            with attempt:
                if ambiguous and (found := await self.lookup(key)) is not None:
                    return found
                try:
                    return await self._post(key, body)
                except AmbiguousPayoutError:
                    ambiguous = True
                    raise
        raise AssertionError("stamina either returns or raises")  # pragma: no cover

    async def pay_batch(self, items: list[PayoutItem], *, resolve_first: set[str]) -> dict[str, ItemOutcome]:
        """Pays every item once per key, as one batch; returns an outcome for every key.

        Keys in `resolve_first` (sent on an earlier pass) and every key of a batch that timed out
        are looked up before anything is sent again; what the provider already holds is its answer."""
        outcomes: dict[str, ItemOutcome] = {}
        pending = {item.key: item for item in items}
        unsure = resolve_first & pending.keys()
        try:
            async for attempt in self._retrying((ProviderUnavailableError, AmbiguousPayoutError)):
                with attempt:
                    if unsure:
                        for found in await self.lookup_many(sorted(unsure)):
                            outcomes[found.key] = found
                            pending.pop(found.key, None)
                        unsure = set()
                    if pending:
                        try:
                            answered = await self._post_batch(list(pending.values()))
                        except AmbiguousPayoutError:
                            unsure = set(pending)
                            raise
                        outcomes.update(answered)
                        pending.clear()
        except (ProviderUnavailableError, AmbiguousPayoutError) as error:
            # Out of tries: these stay reserved, and the next pass asks about them first.
            outcomes.update(dict.fromkeys(pending, error))
        return outcomes

    async def _post_batch(self, items: list[PayoutItem]) -> dict[str, ItemOutcome]:
        body = {"items": [{"key": item.key, **item.body()} for item in items]}
        response = await self._send("POST", "/payout-batches", json=body)
        if response.status_code != 200:
            # The batch itself was refused, so nothing in it was paid: each item is refused.
            refusal = PermanentPayoutError(PAYOUT_REFUSED, f"{response.status_code} {_error_code(response)}")
            return dict.fromkeys((item.key for item in items), refusal)
        outcomes: dict[str, ItemOutcome] = {}
        for answer in response.json()["items"]:
            if answer["outcome"] in ("created", "replayed"):
                outcomes[answer["key"]] = _payout(answer["payout"])
            else:
                outcomes[answer["key"]] = PermanentPayoutError(PAYOUT_REFUSED, str(answer.get("error", "")))
        return outcomes

    async def lookup_many(self, keys: list[str]) -> list[Payout]:
        """The payouts the provider holds for `keys` (unknown keys: nothing was paid for them)."""
        found: list[Payout] = []
        for first in range(0, len(keys), LOOKUP_KEYS_MAX):
            asked = ",".join(keys[first : first + LOOKUP_KEYS_MAX])
            response = await self._send("GET", "/payouts", params={"keys": asked})
            response.raise_for_status()
            found.extend(_payout(document) for document in response.json()["payouts"])
        return found

    async def _send(self, method: str, url: str, **request: Any) -> httpx.Response:
        """One request. Unreachable, or answered 5xx: ProviderUnavailableError (nothing was done).
        A timeout or a connection lost midway: AmbiguousPayoutError, for the request may have been
        received and acted on, and only the provider can tell."""
        try:
            response = await self.client.request(method, url, **request)
        except httpx.ConnectError as error:
            raise ProviderUnavailableError("payout provider unreachable") from error
        except (httpx.TimeoutException, httpx.TransportError) as error:
            raise AmbiguousPayoutError(type(error).__name__) from error
        if response.status_code >= 500:
            raise ProviderUnavailableError(f"payout provider answered {response.status_code}")
        return response

    async def _post(self, key: str, body: dict[str, Any]) -> Payout:
        response = await self._send("POST", "/payouts", json=body, headers={"Idempotency-Key": key})
        if response.status_code in (200, 201):
            return _payout(response.json())
        raise PermanentPayoutError(PAYOUT_REFUSED, f"{response.status_code} {_error_code(response)}")

    async def lookup(self, key: str) -> Payout | None:
        response = await self._send("GET", f"/payouts/{key}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return _payout(response.json())

    async def list_payouts(self) -> list[Payout]:
        """Every payout the provider holds. Reading changes nothing, so an unreachable or failing
        provider (one restarting, say) is simply asked again, within the same bounded retries."""
        async for attempt in self._retrying((ProviderUnavailableError,)):
            with attempt:
                try:
                    response = await self.client.get("/payouts")
                except httpx.TransportError as error:
                    raise ProviderUnavailableError(f"payout provider unreachable: {type(error).__name__}") from error
                if response.status_code >= 500:
                    raise ProviderUnavailableError(f"payout provider answered {response.status_code}")
                response.raise_for_status()
                return [_payout(document) for document in response.json()["payouts"]]
        raise AssertionError("stamina either returns or raises")  # pragma: no cover


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))
    except ValueError:
        return ""
