"""What the sandbox providers share: serving a Starlette app on a port (0 picks a free one) with
one "listening" line once it accepts connections, bounded request bodies, and errors that name
fields and rules, never the values sent."""

import asyncio
import socket
import sys
import time
from typing import Any, TypeVar

import structlog
import uvicorn
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

REQUEST_BODY_BYTES_MAX = 64 * 1024
IDEMPOTENCY_KEY_CHARS_MAX = 200
STARTUP_WAIT_SECONDS_MAX = 30.0
STARTUP_POLL_INTERVAL_SECONDS = 0.01
SHUTDOWN_GRACE_SECONDS = 5.0

Body = TypeVar("Body", bound=BaseModel)

logger = structlog.get_logger("homeward.sandbox")


async def _health(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def application(routes: list[BaseRoute], lifespan: Any) -> Starlette:
    """A sandbox's HTTP app: its own routes, plus `GET /health` (what `homeward up` waits for)."""
    return Starlette(routes=[Route("/health", _health, methods=["GET"]), *routes], lifespan=lifespan)


def error(status_code: int, code: str, message: str, **extra: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status_code)


def invalid(failure: ValidationError) -> JSONResponse:
    """Names the field and the rule it broke, never the value that was sent."""
    first = failure.errors(include_url=False, include_context=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    return error(422, "invalid_request", f"{field}: {first['type']}", field=field)


def _idempotency_key(request: Request) -> str | JSONResponse:
    """The request's Idempotency-Key, or the error answer when it is missing or too long."""
    key = request.headers.get("Idempotency-Key")
    if not key:
        return error(400, "missing_idempotency_key", "the Idempotency-Key header is required")
    if len(key) > IDEMPOTENCY_KEY_CHARS_MAX:
        return error(400, "invalid_idempotency_key", f"Idempotency-Key: at most {IDEMPOTENCY_KEY_CHARS_MAX} chars")
    return key


async def _read_body(request: Request) -> bytes | None:
    """The request body, or None if it is longer than REQUEST_BODY_BYTES_MAX."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > REQUEST_BODY_BYTES_MAX:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def keyed_request(request: Request, model: type[Body]) -> tuple[str, Body] | JSONResponse:
    """A POST's Idempotency-Key and its body parsed as `model`, or the error answer: a missing or
    too long key (400), a body over REQUEST_BODY_BYTES_MAX (413), a body `model` refuses (422)."""
    key = _idempotency_key(request)
    if isinstance(key, JSONResponse):
        return key
    raw = await _read_body(request)
    if raw is None:
        return error(413, "body_too_large", f"the body is limited to {REQUEST_BODY_BYTES_MAX} bytes")
    try:
        return key, model.model_validate_json(raw)
    except ValidationError as failure:
        return invalid(failure)


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


async def serve(app: Starlette, *, name: str, host: str, port: int) -> None:
    """Serves `app` on `host`:`port` until SIGINT or SIGTERM; prints `sandbox NAME listening on URL`."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_SECONDS),
        server_header=False,
    )
    server = uvicorn.Server(config)
    sock = _listening_socket(host, port)
    line = f"sandbox {name} listening on http://{host}:{sock.getsockname()[1]}"
    announcer = asyncio.create_task(_announce(server, line))
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
        sock.close()
