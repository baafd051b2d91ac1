"""Travel's route table and booking worker."""

import random
from datetime import timedelta
from functools import partial
from pathlib import Path

import asyncpg

from contracts.events import ArrivalRejected, ArrivalVerified, RegistrationAccepted, TravelBooked
from services.runtime.consumer import Route
from services.runtime.db import load_queries, runtime_queries
from services.runtime.redrive import Redrive
from services.runtime.service import ServiceDefinition, Worker
from services.runtime.settings import Settings
from services.travel import handlers
from services.travel.adapters.provider import SandboxTravelProvider

SQL = Path(__file__).parent / "adapters" / "sql"


def build(settings: Settings, pool: asyncpg.Pool) -> ServiceDefinition:
    queries = load_queries(SQL)
    provider = SandboxTravelProvider(
        pool,
        failure_rate=settings.sandbox_travel_failure_rate,
        departure_delay=timedelta(seconds=settings.sandbox_flight_departure_delay_seconds),
        flight_duration=timedelta(seconds=settings.sandbox_flight_duration_seconds),
    )
    worker = handlers.BookingWorker(
        pool=pool,
        queries=queries,
        runtime_queries=runtime_queries(),
        provider=provider,
        data_key=settings.require_data_key(),
        policy=handlers.RetryPolicy(
            attempts_max=settings.booking_attempts_max,
            backoff_base_ms=settings.booking_backoff_base_ms,
            backoff_max_ms=settings.booking_backoff_max_ms,
        ),
        batch_size_max=settings.worker_batch_size_max,
        concurrency_max=settings.worker_concurrency_max,
        rng=random.Random(),
    )
    routes = {RegistrationAccepted.TOPIC: Route(partial(handlers.handle_accepted, queries=queries))}
    workers = [
        Worker("booking", worker.book_due, settings.worker_poll_interval_ms / 1000, settings.worker_batch_size_max)
    ]
    # A ticket is handed to arrival; arrival's verdict shows it arrived.
    redrive = Redrive(
        opens_on=frozenset({TravelBooked.TOPIC}), closes_on=frozenset({ArrivalVerified.TOPIC, ArrivalRejected.TOPIC})
    )
    return ServiceDefinition(name="travel", routes=routes, workers=workers, redrive=redrive)
