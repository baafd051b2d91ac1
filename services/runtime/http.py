"""What every HTTP side of ours shares that is not a route: reading a body within a bound,
checking a bearer token, and the client a service calls its provider with (HTTPS with a CA of
its own, a bearer token)."""

import hmac
import ssl
from pathlib import Path

import httpx
from starlette.requests import Request


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
    base_url: str, timeout: httpx.Timeout, *, token: str | None = None, ca_file: Path | None = None
) -> httpx.AsyncClient:
    """The client of a provider's API: its bearer token on every request, when it has one, and
    for an https URL the system's CAs or `ca_file`'s."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers, verify=verify)
