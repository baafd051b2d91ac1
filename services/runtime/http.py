"""What every HTTP side of ours shares that is not a route: reading a body within a bound,
checking a bearer token, and the client a service calls its provider with (HTTPS with a CA of
its own, a bearer token)."""

import hmac
import ssl
from pathlib import Path
from typing import Any

import httpx
import stamina
from starlette.requests import Request

PROVIDER_CONNECT_TIMEOUT_SECONDS = 2.0
RETRY_WAIT_MAX_FACTOR = 16
"""A retried call's pause doubles from the first one up to this many times it."""


async def bounded_body(request: Request, bytes_max: int) -> bytes | None:
    """The request's body, or None once it is longer than `bytes_max`: a declared length over the
    bound is refused before reading, and a body is never held past the bound while it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > bytes_max:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > bytes_max:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def bearer_is(authorization: str, token: str) -> bool:
    """Whether an `Authorization` header presents `token` as its bearer token (constant time). An
    empty token matches nothing: a token setting left empty shuts the door, it does not open it."""
    if not token:
        return False
    scheme, _, presented = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def provider_client(
    base_url: str,
    timeout: httpx.Timeout,
    *,
    token: str | None = None,
    ca_file: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
) -> httpx.AsyncClient:
    """The client of a provider's API: its bearer token on every request, when it has one; for an
    https URL the system's CAs or `ca_file`'s, and `client_cert` (certificate, key) where the
    provider asks the client to prove itself (mutual TLS)."""
    if client_cert is not None and not base_url.startswith("https://"):
        raise ValueError(f"a client certificate needs an https:// provider URL, not {base_url}")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    verify: ssl.SSLContext | bool = True
    if ca_file is not None or client_cert is not None:
        verify = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if client_cert is not None:
            verify.load_cert_chain(certfile=client_cert[0], keyfile=client_cert[1])
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers, verify=verify)


class HttpProvider:
    """What a client of a provider's API holds, payouts and travel alike: the HTTP client (token,
    CA), and the bounded retries every call shares."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float,
        attempts_max: int,
        backoff_initial_seconds: float,
        token: str | None = None,
        ca_file: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
    ) -> None:
        timeout = httpx.Timeout(timeout_seconds, connect=PROVIDER_CONNECT_TIMEOUT_SECONDS)
        self.client = provider_client(base_url, timeout, token=token, ca_file=ca_file, client_cert=client_cert)
        self.attempts_max = attempts_max
        self.backoff_initial_seconds = backoff_initial_seconds

    async def close(self) -> None:
        await self.client.aclose()

    def _retrying(self, on: tuple[type[Exception], ...]) -> Any:
        """`attempts_max` tries on the errors `on` names, the pause doubling from
        `backoff_initial_seconds` up to RETRY_WAIT_MAX_FACTOR times it."""
        return stamina.retry_context(
            on=on,
            attempts=self.attempts_max,
            wait_initial=self.backoff_initial_seconds,
            wait_max=self.backoff_initial_seconds * RETRY_WAIT_MAX_FACTOR,
        )
