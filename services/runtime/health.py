"""Every service's HTTP side: `/health` (the process answers) and `/ready` (its database and
broker are reachable and it owns partitions), `/metrics` (Prometheus), plus any routes the service
adds."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import uvicorn
from faststream.kafka import KafkaBroker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from services.runtime import metrics

CHECK_TIMEOUT_SECONDS = 1.0


@dataclass
class Readiness:
    pool: asyncpg.Pool
    broker: KafkaBroker
    subscriber: Any
    details: Callable[[], dict[str, Any]] | None = None
    checks: dict[str, Callable[[], Awaitable[bool]]] = field(init=False)

    def __post_init__(self) -> None:
        self.checks = {"database": self._database, "broker": self._broker, "consuming": self._consuming}

    async def _database(self) -> bool:
        async with self.pool.acquire(timeout=CHECK_TIMEOUT_SECONDS) as connection:
            return bool(await connection.fetchval("SELECT 1", timeout=CHECK_TIMEOUT_SECONDS) == 1)

    async def _broker(self) -> bool:
        return bool(await self.broker.ping(timeout=CHECK_TIMEOUT_SECONDS))

    async def _consuming(self) -> bool:
        consumer = getattr(self.subscriber, "consumer", None)
        return bool(consumer is not None and consumer.assignment())

    async def report(self) -> dict[str, bool]:
        results = {}
        for name, check in self.checks.items():
            try:
                results[name] = await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS * 2)
            except Exception:
                results[name] = False
        return results

    async def health(self, _: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", **(self.details() if self.details else {})})

    async def ready(self, _: Request) -> JSONResponse:
        checks = await self.report()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    def app(self, extra_routes: list[BaseRoute]) -> Starlette:
        routes: list[BaseRoute] = [
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
            *extra_routes,
        ]
        return Starlette(routes=routes)


def http_server(app: Starlette, host: str, port: int) -> uvicorn.Server:
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off")
    )
    # FastStream owns the process's signals; the server is stopped through `should_exit`.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    return server
