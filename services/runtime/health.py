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
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.runtime import metrics
from services.runtime.db import runtime_queries
from services.runtime.http import bearer_is

CHECK_TIMEOUT_SECONDS = 1.0


@dataclass
class Readiness:
    pool: asyncpg.Pool
    broker: KafkaBroker
    subscriber: Any
    details: Callable[[], dict[str, Any]] | None = None
    scrape: Callable[[Any], Awaitable[None]] | None = None
    metrics_token: str | None = None
    """When set, /metrics answers only a scraper that presents it as a bearer token."""
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

    async def metrics(self, request: Request) -> Response:
        """Prometheus exposition; the gauges are read now, and a failed read leaves them as they were
        (the counters still answer, and /ready says what is down)."""
        if self.metrics_token is not None and not bearer_is(
            request.headers.get("authorization", ""), self.metrics_token
        ):
            return JSONResponse(
                {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'}
            )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._read_gauges(), CHECK_TIMEOUT_SECONDS * 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._read_lag(), CHECK_TIMEOUT_SECONDS * 2)
        for check, passed in (await self.report()).items():
            metrics.READY.labels(check).set(1 if passed else 0)
        return metrics.exposition()

    async def _read_gauges(self) -> None:
        async with self.pool.acquire(timeout=CHECK_TIMEOUT_SECONDS) as connection:
            backlog = await runtime_queries().backlog(connection)
            if self.scrape is not None:
                await self.scrape(connection)
        metrics.OUTBOX_UNSENT.set(backlog["unsent"])
        metrics.OUTBOX_OLDEST_UNSENT_SECONDS.set(backlog["oldest_unsent_seconds"])
        metrics.OUTBOX_PARKED.set(backlog["parked"])
        metrics.OPEN_CASES.set(backlog["open_cases"])

    async def _read_lag(self) -> None:
        consumer = getattr(self.subscriber, "consumer", None)
        if consumer is None:
            return
        lags = {}
        for partition in consumer.assignment():
            highwater = consumer.highwater(partition)  # known after the first fetch from that partition
            if highwater is not None:
                lags[partition] = max(0, highwater - await consumer.position(partition))
        metrics.CONSUMER_LAG.clear()  # partitions this process no longer holds drop out
        for partition, lag in lags.items():
            metrics.CONSUMER_LAG.labels(partition.topic, str(partition.partition)).set(lag)

    async def ready(self, _: Request) -> JSONResponse:
        checks = await self.report()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    def app(self, extra_routes: list[BaseRoute]) -> Starlette:
        routes: list[BaseRoute] = [
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
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
