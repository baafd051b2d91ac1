"""The payout provider over HTTP (httpx), with bounded retries (stamina) and ambiguity resolved
by asking the provider before any new attempt: never a second payout."""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import httpx
import stamina
import structlog

logger = structlog.get_logger("homeward.disbursement.provider")

CONNECT_TIMEOUT_SECONDS = 2.0
PAYOUT_REFUSED = "payout_refused"


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


class PayoutProvider(Protocol):
    async def pay(
        self, *, key: str, amount: Decimal, currency: str, method: str, instrument: dict[str, Any], resolve_first: bool
    ) -> Payout: ...

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


class HttpPayoutProvider:
    def __init__(
        self, base_url: str, *, timeout_seconds: float, attempts_max: int, backoff_initial_seconds: float
    ) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(timeout_seconds, connect=CONNECT_TIMEOUT_SECONDS)
        )
        self.attempts_max = attempts_max
        self.backoff_initial_seconds = backoff_initial_seconds

    async def close(self) -> None:
        await self.client.aclose()

    def _retrying(self, on: tuple[type[Exception], ...]) -> Any:
        """The bounded retries every call shares: `attempts_max` tries, the pause doubling from
        `backoff_initial_seconds` up to 16 times it."""
        return stamina.retry_context(
            on=on,
            attempts=self.attempts_max,
            wait_initial=self.backoff_initial_seconds,
            wait_max=self.backoff_initial_seconds * 16,
        )

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

    async def _post(self, key: str, body: dict[str, Any]) -> Payout:
        try:
            response = await self.client.post("/payouts", json=body, headers={"Idempotency-Key": key})
        except httpx.ConnectError as error:
            raise ProviderUnavailableError("payout provider unreachable") from error
        except (httpx.TimeoutException, httpx.TransportError) as error:
            # The request may have been received and acted on; only the provider can tell.
            raise AmbiguousPayoutError(type(error).__name__) from error
        if response.status_code >= 500:
            raise ProviderUnavailableError(f"payout provider answered {response.status_code}")
        if response.status_code in (200, 201):
            return _payout(response.json())
        raise PermanentPayoutError(PAYOUT_REFUSED, f"{response.status_code} {_error_code(response)}")

    async def lookup(self, key: str) -> Payout | None:
        try:
            response = await self.client.get(f"/payouts/{key}")
        except httpx.ConnectError as error:
            raise ProviderUnavailableError("payout provider unreachable") from error
        except (httpx.TimeoutException, httpx.TransportError) as error:
            raise AmbiguousPayoutError(type(error).__name__) from error
        if response.status_code == 404:
            return None
        if response.status_code >= 500:
            raise ProviderUnavailableError(f"payout provider answered {response.status_code}")
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
