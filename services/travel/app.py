"""Travel's route table, its booking worker and its cancellation worker."""

import random
from functools import partial
from pathlib import Path

from contracts.events import (
    ArrivalRejected,
    ArrivalVerified,
    CaseWithdrawn,
    RegistrationAccepted,
    TravelBooked,
    TravelBookingFailed,
)
from services.runtime.consumer import Route
from services.runtime.db import load_queries
from services.runtime.redrive import Redrive
from services.runtime.retention import Retention
from services.runtime.service import ServiceDefinition, Worker
from services.runtime.settings import revealed
from services.runtime.uow import ServiceDatabase
from services.travel import handlers
from services.travel.adapters.provider import HttpTravelProvider
from services.travel.settings import TravelSettings

SQL = Path(__file__).parent / "adapters" / "sql"


SETTINGS = TravelSettings
BOOKING_LEASE_MARGIN_SECONDS = 30.0
"""Beyond the longest a whole booking pass can take, before its requests are taken up again."""


def travel_provider(settings: TravelSettings) -> HttpTravelProvider:
    if not settings.travel_provider_url:
        raise SystemExit(
            "HOMEWARD_TRAVEL_PROVIDER_URL is not set; `homeward up` starts a sandbox travel provider and sets it, "
            "or run one with `homeward sandbox travel`."
        )
    return HttpTravelProvider(
        settings.travel_provider_url,
        timeout_seconds=settings.travel_provider_timeout_ms / 1000,
        attempts_max=settings.travel_provider_attempts_max,
        backoff_initial_seconds=settings.travel_provider_backoff_initial_ms / 1000,
        token=revealed(settings.travel_provider_token),
        ca_file=settings.provider_ca_file,
        client_cert=settings.provider_client_cert(),
    )


# A ticket is handed to arrival; arrival's verdict shows it arrived.
REDRIVE = Redrive(
    opens_on=frozenset({TravelBooked.TOPIC}),
    closes_on=frozenset({ArrivalVerified.TOPIC, ArrivalRejected.TOPIC, CaseWithdrawn.TOPIC}),
)


# Travel needs the traveler's part to book and for nothing after: its copy's retention runs from
# the booking's outcome (booked or failed, its own decisions, noted in the transaction that records
# them), which comes before the case closes, or from a withdrawal that came first.
RETENTION = Retention(
    SQL, decides=frozenset({TravelBooked.TOPIC, TravelBookingFailed.TOPIC}), consumes=frozenset({CaseWithdrawn.TOPIC})
)


def build(settings: TravelSettings, database: ServiceDatabase) -> ServiceDefinition:
    queries = load_queries(SQL)
    provider = travel_provider(settings)
    data_key = settings.require_data_key()
    policy = handlers.RetryPolicy(
        attempts_max=settings.booking_attempts_max,
        backoff_base_ms=settings.booking_backoff_base_ms,
        backoff_max_ms=settings.booking_backoff_max_ms,
        call_seconds_max=settings.travel_provider_timeout_ms / 1000 * settings.travel_provider_attempts_max,
        lease_margin_seconds=BOOKING_LEASE_MARGIN_SECONDS,
    )
    worker = handlers.BookingWorker(
        database=database,
        queries=queries,
        provider=provider,
        data_key=data_key,
        policy=policy,
        batch_size_max=settings.worker_batch_size_max,
        batch_items_max=settings.travel_batch_items_max,
        concurrency_max=settings.worker_concurrency_max,
        rng=random.Random(),
    )
    cancellations = handlers.CancellationWorker(
        database=database,
        queries=queries,
        provider=provider,
        policy=policy,
        batch_size_max=settings.worker_batch_size_max,
        concurrency_max=settings.worker_concurrency_max,
        rng=random.Random(),
    )
    routes = {
        RegistrationAccepted.TOPIC: Route(batch=partial(handlers.handle_accepted, queries=queries, data_key=data_key)),
        # Also starts the retention of the traveler's part (RETENTION): the two are run as one route.
        CaseWithdrawn.TOPIC: Route(batch=partial(handlers.handle_withdrawn, queries=queries)),
    }
    interval, batch = settings.worker_poll_interval_ms / 1000, settings.worker_batch_size_max
    fallback = settings.worker_fallback_poll_ms / 1000
    workers = [
        Worker("booking", worker.book_due, interval, batch),
        # Woken by the statements that make a ticket due (migration 0006): rare, so not polled.
        Worker("cancellation", cancellations.cancel_due, fallback, batch, wakes_on="cancellations"),
    ]
    return ServiceDefinition(name="travel", routes=routes, workers=workers)
