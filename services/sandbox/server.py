"""What the sandbox providers share: serving a Starlette app on a port (0 picks a free one) with
one "listening" line once it accepts connections, bounded request bodies, and errors that name
fields and rules, never the values sent."""

import asyncio
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import structlog
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from services.runtime.http import bearer_is, bounded_body
from services.sandbox.settings import SandboxTls

REQUEST_BODY_BYTES_MAX = 64 * 1024
IDEMPOTENCY_KEY_CHARS_MAX = 200
BATCH_ITEMS_MAX = 500
BATCH_BODY_BYTES_MAX = 1024 * 1024
STARTUP_WAIT_SECONDS_MAX = 30.0
STARTUP_POLL_INTERVAL_SECONDS = 0.01
SHUTDOWN_GRACE_SECONDS = 5.0

Body = TypeVar("Body", bound=BaseModel)

logger = structlog.get_logger("homeward.sandbox")


async def _health(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def application(routes: list[BaseRoute], lifespan: Any, *, token: str | None = None) -> Starlette:
    """A sandbox's HTTP app: its own routes, plus `GET /health` (what `homeward up` waits for).
    With a `token`, every route but /health answers 401 unless the caller presents it as a bearer
    token, as a real provider's API requires its credential."""
    app = Starlette(routes=[Route("/health", _health, methods=["GET"]), *routes], lifespan=lifespan)
    if token is not None:
        app.add_middleware(BaseHTTPMiddleware, dispatch=partial(_require_bearer, token))
    return app


async def _require_bearer(token: str, request: Request, call_next: Any) -> Any:
    if request.url.path == "/health" or bearer_is(request.headers.get("authorization", ""), token):
        return await call_next(request)
    return JSONResponse(
        {"error": "unauthorized", "message": "send the provider's token as `Authorization: Bearer <token>`"},
        status_code=401, headers={"WWW-Authenticate": 'Bearer realm="provider"'},
    )  # fmt: skip


def error(status_code: int, code: str, message: str, **extra: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status_code)


def problem(failure: ValidationError) -> tuple[str, str]:
    """The first field a body got wrong and "field: rule", never the value that was sent."""
    first = failure.errors(include_url=False, include_context=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    return field, f"{field}: {first['type']}"


def invalid(failure: ValidationError) -> JSONResponse:
    """Names the field and the rule it broke, never the value that was sent."""
    field, message = problem(failure)
    return error(422, "invalid_request", message, field=field)


def _idempotency_key(request: Request) -> str | JSONResponse:
    """The request's Idempotency-Key, or the error answer when it is missing or too long."""
    key = request.headers.get("Idempotency-Key")
    if not key:
        return error(400, "missing_idempotency_key", "the Idempotency-Key header is required")
    if len(key) > IDEMPOTENCY_KEY_CHARS_MAX:
        return error(400, "invalid_idempotency_key", f"Idempotency-Key: at most {IDEMPOTENCY_KEY_CHARS_MAX} chars")
    return key


async def keyed_request(request: Request, model: type[Body]) -> tuple[str, Body] | JSONResponse:
    """A POST's Idempotency-Key and its body parsed as `model`, or the error answer: a missing or
    too long key (400), a body over REQUEST_BODY_BYTES_MAX (413), a body `model` refuses (422)."""
    key = _idempotency_key(request)
    if isinstance(key, JSONResponse):
        return key
    body = await parsed_body(request, model, bytes_max=REQUEST_BODY_BYTES_MAX)
    return body if isinstance(body, JSONResponse) else (key, body)


async def parsed_body(request: Request, model: type[Body], *, bytes_max: int) -> Body | JSONResponse:
    """A POST's body parsed as `model`, or the error answer: over `bytes_max` (413), refused (422)."""
    raw = await bounded_body(request, bytes_max)
    if raw is None:
        return error(413, "body_too_large", f"the body is limited to {bytes_max} bytes")
    try:
        return model.model_validate_json(raw)
    except ValidationError as failure:
        return invalid(failure)


class Batch(BaseModel):
    """The body of a batch POST: items read one by one, so that one bad item is refused alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    items: list[dict[str, Any]] = Field(min_length=1, max_length=BATCH_ITEMS_MAX)


@dataclass(frozen=True)
class Item(Generic[Body]):
    """One readable item of a batch: where it stands in the batch, its key and its body."""

    index: int
    key: str
    body: Body


def rejected(key: Any, code: str, message: str) -> dict[str, Any]:
    """A batch item's answer when it is refused (the others in its batch are not affected)."""
    return {"key": key, "outcome": "rejected", "error": code, "message": message}


def answered(key: str, created: bool, name: str, document: dict[str, Any]) -> dict[str, Any]:
    """A batch item's answer when it was done now (created) or before under its key (replayed)."""
    return {"key": key, "outcome": "created" if created else "replayed", name: document}


def batch_items(batch: Batch, model: type[Body]) -> tuple[list[Item[Body]], list[dict[str, Any]]]:
    """The readable items of a batch, and an answer slot per item (filled in for refused ones:
    a missing or too long key, a key that appears earlier in the batch, a body `model` refuses)."""
    items: list[Item[Body]] = []
    answers: list[dict[str, Any]] = [{} for _ in batch.items]
    seen: set[str] = set()
    for index, item in enumerate(batch.items):
        key = item.get("key")
        if not isinstance(key, str) or not 0 < len(key) <= IDEMPOTENCY_KEY_CHARS_MAX:
            answers[index] = rejected(key, "invalid_item", f"key: 1 to {IDEMPOTENCY_KEY_CHARS_MAX} chars")
            continue
        if key in seen:
            answers[index] = rejected(key, "duplicate_key", "the key appears earlier in this batch")
            continue
        seen.add(key)
        try:
            body = model.model_validate({name: value for name, value in item.items() if name != "key"})
        except ValidationError as failure:
            answers[index] = rejected(key, "invalid_item", problem(failure)[1])
            continue
        items.append(Item(index, key, body))
    return items, answers


def injected_unavailable(nothing_done: str) -> JSONResponse:
    """The 503 a sandbox answers when it injects a transient fault, before doing anything."""
    response = error(503, "unavailable", f"transient error injected by the sandbox; {nothing_done}")
    response.headers["Retry-After"] = "1"
    return response


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A restarted sandbox takes its old port back even while old connections linger in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def _announce(server: uvicorn.Server, line: str) -> None:
    """Prints the listening line once uvicorn accepts connections."""
    deadline = time.monotonic() + STARTUP_WAIT_SECONDS_MAX
    while not server.started:
        if time.monotonic() > deadline:
            logger.error("sandbox.start_timeout", waited_seconds=STARTUP_WAIT_SECONDS_MAX)
            server.should_exit = True
            return
        await asyncio.sleep(STARTUP_POLL_INTERVAL_SECONDS)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def serve(app: Starlette, *, name: str, host: str, port: int, tls: SandboxTls) -> None:
    """Serves `app` on `host`:`port` until SIGINT or SIGTERM; prints `sandbox NAME listening on URL`.
    With a certificate it speaks HTTPS, and with a client CA it requires a client certificate
    that CA signed (the handshake fails without one)."""
    https: dict[str, Any] = {}
    if tls.sandbox_tls_cert_file is not None:
        https = {"ssl_certfile": tls.sandbox_tls_cert_file, "ssl_keyfile": tls.sandbox_tls_key_file}
    if tls.sandbox_client_ca_file is not None:
        https |= {"ssl_ca_certs": str(tls.sandbox_client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_SECONDS),
        server_header=False,
        **https,
    )
    server = uvicorn.Server(config)
    sock = _listening_socket(host, port)
    scheme = "https" if https else "http"
    line = f"sandbox {name} listening on {scheme}://{host}:{sock.getsockname()[1]}"
    announcer = asyncio.create_task(_announce(server, line))
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
        sock.close()
