"""Runs one service: a FastStream Kafka app around a route table, the outbox relay and workers.

This is the only module besides the CLI that touches Kafka for the services.
"""

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from faststream.message import StreamMessage
from starlette.applications import Starlette

from contracts.registry import PAYLOAD_TYPES
from services.runtime import crypto, kafka_security, unreadable
from services.runtime.consumer import BatchConsumer, Route
from services.runtime.db import TRANSIENT_ERRORS, create_pool, fetch_all, runtime_queries
from services.runtime.health import Readiness, http_server
from services.runtime.messages import Record
from services.runtime.produce import KafkaPublisher
from services.runtime.redrive import Redrive, RedriveSweeper, close_cases
from services.runtime.relay import OutboxRelay
from services.runtime.retention import ERASURE_BATCH_MAX, Retention, RetentionSweeper, note_closed
from services.runtime.settings import SealedData, ServiceSettings, revealed
from services.runtime.uow import ServiceDatabase, UnitOfWork
from services.runtime.wakeup import Signal, Wakeup, outbox_channel

ASSIGNMENT_WAIT_SECONDS_MAX = 60.0
RETENTION_INTERVAL_SECONDS = 3600.0
UNREADABLE_RECORD_INTERVAL_SECONDS = 1.0
PRODUCER_REQUEST_BYTES_MAX = 4 * 1024 * 1024
RELAY_BATCH_BYTES = 1024 * 1024
"""Bytes of one produce batch for one partition (aiokafka's default is 16 KiB)."""
KAFKA_REQUEST_TIMEOUT_MS = 30_000
LOG_APPEND_TIME = 1
"""Kafka's timestamp type of a record the broker stamped (0: the producer's CreateTime)."""
ASSIGNMENT_POLL_SECONDS = 0.1

Step = Callable[[], Awaitable[int]]
"""One pass of a worker; returns how many items it handled."""


@dataclass(frozen=True)
class Worker:
    """A periodic background step (booking, sweeping, paying) with its own pace."""

    name: str
    step: Step
    interval_seconds: float
    """The pause after a pass that did not fill its batch (for a woken worker: the fallback poll)."""
    batch_size_max: int
    wakes_on: str | None = None
    """A channel of the service's schema (`<schema>.<wakes_on>`) whose notifications wake the worker."""


@dataclass
class ServiceDefinition:
    name: str
    routes: dict[str, Route]
    workers: list[Worker] = field(default_factory=list)
    on_start: Callable[[], Awaitable[None]] | None = None
    http_routes: list[Any] = field(default_factory=list)
    """Routes a service serves over HTTP (disbursement's payout callbacks)."""
    http_routes_port: int = 0
    """Where: a port of their own, apart from /health, /ready and /metrics (what the provider can
    reach is not what the operators scrape); 0 serves them beside those, on the service's port."""
    health_details: Callable[[], dict[str, Any]] | None = None
    # Sets the service's own gauges from the database at each /metrics scrape (e.g. the budget left).
    scrape: Callable[[Any], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.routes) - set(PAYLOAD_TYPES)
        assert not unknown, f"routes for topics outside the contract: {unknown}"


Builder = Callable[[Any, ServiceDatabase], ServiceDefinition]
"""`build(settings, database)` of a service's app module; `settings` is of the module's `SETTINGS` class."""


@dataclass(frozen=True)
class ServiceModule:
    """What a service's app module declares: how to build it, what settings it reads, and which
    of its events hand cases downstream to be re-driven until they move on (`REDRIVE`, if any)."""

    build: Builder
    settings: type[ServiceSettings]
    redrive: Redrive | None
    retention: Retention | None = None
    """Set where the service keeps personal data, which it erases once a case's retention is over."""


async def run_worker(worker: Worker, stopping: asyncio.Event, signal: Signal | None = None) -> None:
    """Runs a step until stopped; a full batch runs again at once, anything less waits (until the
    signal, if the worker has one, or the interval)."""
    log = structlog.get_logger("homeward.worker").bind(worker=worker.name)
    while not stopping.is_set():
        handled = 0
        try:
            handled = await worker.step()
        except TRANSIENT_ERRORS:
            log.warning("worker.transient_failure", exc_info=True)
        except Exception:
            log.exception("worker.failed")
        if handled >= worker.batch_size_max:
            continue
        if signal is not None:
            await signal.wait(stopping, worker.interval_seconds)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), worker.interval_seconds)


async def _raw_records(message: StreamMessage[Any]) -> Any:
    """Hands the subscriber the records themselves: bytes are validated by our decoder, not FastStream's."""
    return message.raw_message


def _record(raw: ConsumerRecord) -> Record:
    appended_at = None
    if raw.timestamp_type == LOG_APPEND_TIME and raw.timestamp is not None:
        appended_at = datetime.fromtimestamp(raw.timestamp / 1000, UTC)
    headers = tuple((key, value or b"") for key, value in raw.headers or ())
    return Record(raw.topic, raw.partition, raw.offset, raw.key, raw.value or b"", headers, appended_at)


def _enable_redrive(
    definition: ServiceDefinition, redrive: Redrive, settings: ServiceSettings, pool: asyncpg.Pool
) -> None:
    """Adds the sweepers that resend stalled cases' events (the closing topics: `_closing_routes`)."""
    sweeper = RedriveSweeper(
        pool=pool,
        runtime_queries=runtime_queries(),
        redrive=redrive,
        after_seconds=settings.redrive_after_seconds,
        cap_seconds=settings.redrive_cap_seconds,
        batch_size_max=settings.worker_batch_size_max,
        retention_hours=settings.outbox_retention_hours,
    )
    interval = settings.redrive_interval_ms / 1000
    definition.workers.append(Worker("redrive", sweeper.sweep, interval, settings.worker_batch_size_max))
    definition.workers.append(Worker("outbox-retention", sweeper.forget_old_events, RETENTION_INTERVAL_SECONDS, 1))


def _enable_retention(
    definition: ServiceDefinition, retention: Retention, settings: ServiceSettings, pool: asyncpg.Pool
) -> None:
    """Adds the sweep that erases closed cases' personal data once their retention is over."""
    sweeper = RetentionSweeper(
        pool=pool,
        runtime_queries=runtime_queries(),
        retention=retention,
        days=settings.pii_retention_days,
        batch_size_max=ERASURE_BATCH_MAX,
    )
    definition.workers.append(Worker("erasure", sweeper.sweep, settings.erasure_interval_ms / 1000, ERASURE_BATCH_MAX))


Closing = Callable[[list[Any], UnitOfWork], Awaitable[None]]


def _closing_routes(definition: ServiceDefinition, loaded: "ServiceModule") -> None:
    """Subscribes to the topics that close cases: for the re-drive (the case moved on), for the
    retention (its personal data may go), or both, in one route per topic."""
    steps: dict[str, list[Closing]] = {}
    for topic in loaded.redrive.closes_on if loaded.redrive is not None else ():
        steps.setdefault(topic, []).append(close_cases)
    for topic in loaded.retention.closes_on if loaded.retention is not None else ():
        steps.setdefault(topic, []).append(note_closed)
    for topic, closings in steps.items():
        handled = definition.routes.get(topic)
        if handled is None:
            definition.routes[topic] = Route(batch=partial(_close_all, closings))
        else:  # the service's own handler first, then the closings, in the batch's one transaction
            definition.routes[topic] = replace(handled, batch=partial(_close_all, [handled.batch, *closings]))


async def _close_all(closings: list[Closing], events: list[Any], uow: UnitOfWork) -> None:
    for closing in closings:
        await closing(events, uow)


async def _check_case_keys_open(pool: asyncpg.Pool, keyring: crypto.Keyring, service: str) -> None:
    """Refuses to start a reader whose stored case keys name a data key it was not given: it
    would fail those cases' bookings or payments for good instead of waiting for the key."""
    async with pool.acquire() as connection:
        needed = {row["key_id"] for row in await fetch_all(runtime_queries().live_case_key_ids(connection))}
    if missing := sorted(key_id for key_id in needed if not keyring.holds(key_id)):
        raise SystemExit(
            f"{service}: its case keys are wrapped by data keys {', '.join(missing)}, which it does not hold: "
            "give it those keys (retired ones in HOMEWARD_DATA_KEYS_RETIRED), or run `homeward keys rewrap` "
            "with them first"
        )


def load_service(service: str) -> ServiceModule:
    """Imports only the named service, so a process never loads another service's code: its
    builder, the settings class it reads (and nothing another service reads), and its re-drive."""
    module = importlib.import_module(f"services.{service}.app")
    return ServiceModule(
        module.build, module.SETTINGS, getattr(module, "REDRIVE", None), getattr(module, "RETENTION", None)
    )


def preflight(settings: ServiceSettings) -> None:
    """Every setting the service needs (each `require_…` of its settings), checked before it
    touches the database: all that are missing or wrong, named at once."""
    problems = []
    for name in sorted(dir(type(settings))):
        if name.startswith("require_"):
            try:
                getattr(settings, name)()
            except SystemExit as problem:
                problems.append(str(problem.code))
    if problems:
        raise SystemExit("\n".join(problems))


def create_app(service: str) -> FastStream:
    loaded = load_service(service)
    settings = loaded.settings()
    preflight(settings)
    unreadable.install()
    database_url, bootstrap = settings.require_infrastructure()
    logger = structlog.get_logger("homeward.service")
    # The broker consumes; everything a service sends (events and dead-letter copies alike) goes
    # through the outbox and the relay's own producer (`relay_producer`).
    broker = KafkaBroker(
        bootstrap,
        client_id=f"homeward-{service}",
        request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS,
        metadata_max_age_ms=settings.kafka_metadata_max_age_ms,
        security=kafka_security.security(settings),
        logger=logger,
        # FastStream's own "Received"/"Processed" lines describe whole batches and carry no case
        # ids; the consumer logs each event with its ids instead, so these drop to DEBUG.
        log_level=logging.DEBUG,
        # On SIGTERM the batch in hand finishes and commits (or stays uncommitted), within this bound.
        graceful_timeout=settings.shutdown_timeout_seconds,
    )
    app = FastStream(broker, logger=logger)
    stopping = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    state: dict[str, Any] = {}

    @app.on_startup
    async def prepare() -> None:
        if settings.migrate_on_start:
            # Imported here: psycopg and yoyo are a fifth of a service's start-up CPU.
            from services.runtime.migrate import NotMigrated, migrate, migrate_audit

            try:
                applied = await asyncio.to_thread(migrate, database_url, service)
                # The audit trail's schema, so the operator commands can record what they change.
                applied += await asyncio.to_thread(migrate_audit, database_url)
            except NotMigrated as error:
                # A service's own role may not change its tables: the administrator migrates.
                raise SystemExit(f"{service}: {error}") from None
            logger.info("service.migrated", migrations_applied=applied)
        pool = await create_pool(settings, schema=service)
        opens = loaded.redrive.opens_on if loaded.redrive is not None else frozenset()
        # A service that holds the data key seals its dead-letter copies with it until they are sent.
        dead_letter_key = settings.require_data_key() if isinstance(settings, SealedData) else None
        if dead_letter_key is not None:
            await _check_case_keys_open(pool, dead_letter_key, service)
        decides = loaded.retention.decides if loaded.retention is not None else frozenset()
        database = ServiceDatabase(
            pool, service, runtime_queries(), redrive_topics=opens, dead_letter_key=dead_letter_key,
            closing_topics=decides,
        )  # fmt: skip
        definition = loaded.build(settings, database)
        _closing_routes(definition, loaded)
        if loaded.redrive is not None:
            _enable_redrive(definition, loaded.redrive, settings, pool)
        if loaded.retention is not None:
            _enable_retention(definition, loaded.retention, settings, pool)
        if definition.on_start is not None:
            await definition.on_start()
        consumer = BatchConsumer(
            database=database,
            routes=definition.routes,
            retry_backoff_seconds=settings.consumer_retry_backoff_ms / 1000,
            handler_attempts_max=settings.handler_attempts_max,
            handler_backoff_seconds=settings.handler_backoff_ms / 1000,
        )
        wakeup = Wakeup(database_url, outbox_channel(service))
        producer = relay_producer(settings, bootstrap, service)
        await producer.start()
        state["producer"] = producer
        relay = OutboxRelay(
            pool=pool,
            publisher=KafkaPublisher(producer),
            runtime_queries=runtime_queries(),
            batch_size_max=settings.relay_batch_size_max,
            poll_interval_seconds=settings.relay_poll_interval_ms / 1000,
            retry_backoff_seconds=settings.relay_retry_backoff_ms / 1000,
            dead_letter_key=dead_letter_key,
            retry_backoff_max_seconds=settings.relay_retry_backoff_max_ms / 1000,
            wakeup=wakeup,
        )
        state.update(pool=pool, definition=definition, wakeup=wakeup)
        definition.workers.append(
            Worker(
                "unreadable-batches",
                lambda: unreadable.record(pool, runtime_queries()),
                UNREADABLE_RECORD_INTERVAL_SECONDS,
                unreadable.PENDING_REPORTS_MAX,
            )
        )

        subscriber = broker.subscriber(
            *definition.routes,
            group_id=f"homeward-{service}",
            batch=True,
            max_records=settings.consumer_batch_size_max,
            batch_timeout_ms=settings.consumer_batch_timeout_ms,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            # Offsets are committed only after the batch's database transaction commits;
            # an exception rewinds the partitions so the batch is delivered again.
            ack_policy=AckPolicy.NACK_ON_ERROR,
            decoder=_raw_records,
        )

        @subscriber
        async def on_records(records: Any) -> None:
            await consumer.consume([_record(raw) for raw in records])

        state["subscriber"] = subscriber
        # The relay and the workers need only the database (and the relay its own producer): they
        # start now, not after the consumer group join, so a restarted service publishes, pays and
        # books within a moment of starting.
        tasks.append(asyncio.create_task(relay.run(stopping), name="outbox-relay"))
        signals = {
            worker.name: wakeup.signal(f"{service}.{worker.wakes_on}")
            for worker in definition.workers
            if worker.wakes_on is not None
        }
        tasks.append(asyncio.create_task(wakeup.listen(stopping), name="wakeup"))
        for worker in definition.workers:
            signal = signals.get(worker.name)
            tasks.append(asyncio.create_task(run_worker(worker, stopping, signal), name=worker.name))

    @app.after_startup
    async def start_background() -> None:
        definition: ServiceDefinition = state["definition"]
        tasks.append(asyncio.create_task(_announce_consuming(state["subscriber"], logger)))
        servers: list[Any] = []
        own_port = definition.http_routes_port if definition.http_routes else 0
        if own_port == settings.http_port:
            own_port = 0  # the same port twice: one server, the routes beside /health
        if settings.http_port:
            token = revealed(settings.metrics_token)
            readiness = Readiness(
                state["pool"], broker, state["subscriber"], definition.health_details, definition.scrape, token
            )
            beside = [] if own_port else definition.http_routes
            servers.append(http_server(readiness.app(beside), settings.http_host, settings.http_port))
        if own_port:
            servers.append(http_server(Starlette(routes=definition.http_routes), settings.http_host, own_port))
        state["http_servers"] = servers
        for number, server in enumerate(servers):
            tasks.append(asyncio.create_task(server.serve(), name=f"http-{number}"))

    @app.on_shutdown
    async def stop_background() -> None:
        stopping.set()
        for server in state.get("http_servers", []):
            server.should_exit = True
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), settings.shutdown_timeout_seconds)

    @app.after_shutdown
    async def close_pool() -> None:
        if "producer" in state:
            await state["producer"].stop()
        pool: asyncpg.Pool | None = state.get("pool")
        if pool is not None:
            await pool.close()

    return app


def relay_producer(settings: ServiceSettings, bootstrap: str, service: str) -> AIOKafkaProducer:
    """The relay's own producer: it hands the outbox to Kafka in batches per partition (FastStream's
    publish costs a call through its middlewares per record). Created inside the event loop."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=f"homeward-{service}-relay",
        acks="all",
        enable_idempotence=False,  # tansu does not implement it; the inbox deduplicates instead
        request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS,
        metadata_max_age_ms=settings.kafka_metadata_max_age_ms,
        compression_type=settings.kafka_compression_type,
        # A dead-letter copy is the original record plus headers: room above the broker's usual
        # 1 MiB so that copying a maximal record does not fail.
        max_request_size=PRODUCER_REQUEST_BYTES_MAX,
        max_batch_size=RELAY_BATCH_BYTES,
        **kafka_security.client_options(settings),
    )


async def _announce_consuming(subscriber: Any, logger: Any) -> None:
    """Logs `service.consuming` once the consumer owns partitions: `homeward up` waits for this line."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ASSIGNMENT_WAIT_SECONDS_MAX
    while loop.time() < deadline:
        consumer = getattr(subscriber, "consumer", None)
        if consumer is not None and consumer.assignment():
            logger.info("service.consuming", partitions=len(consumer.assignment()))
            return
        await asyncio.sleep(ASSIGNMENT_POLL_SECONDS)
    logger.error("service.no_partitions_assigned", waited_seconds=ASSIGNMENT_WAIT_SECONDS_MAX)
