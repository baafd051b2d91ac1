"""Disbursement's route table, budget funding, payout worker and payout-callback endpoint."""

from functools import partial
from pathlib import Path

from contracts.events import ArrivalVerified, RegistrationAccepted, StipendDisbursed, StipendFailed
from services.disbursement import handlers, stipends
from services.disbursement.adapters.callbacks import CallbackEndpoint
from services.disbursement.adapters.provider import HttpPayoutProvider
from services.disbursement.ledger import ChainKey
from services.disbursement.settings import DisbursementSettings
from services.runtime.consumer import Route
from services.runtime.db import load_queries
from services.runtime.http import RETRY_WAIT_MAX_FACTOR
from services.runtime.retention import Retention
from services.runtime.service import ServiceDefinition, Worker
from services.runtime.settings import revealed
from services.runtime.uow import ServiceDatabase

SQL = Path(__file__).parent / "adapters" / "sql"


def queries(chain: ChainKey | None = None) -> stipends.Queries:
    """The stipends' SQL; with the ledger key where the journal is appended to or verified."""
    return stipends.Queries(
        payments=load_queries(SQL / "payments.sql"), ledger=load_queries(SQL / "ledger.sql"), chain=chain
    )


def provider(settings: DisbursementSettings) -> HttpPayoutProvider:
    if not settings.payout_provider_url:
        raise SystemExit("HOMEWARD_PAYOUT_PROVIDER_URL is not set; `homeward up` starts a sandbox provider.")
    return HttpPayoutProvider(
        settings.payout_provider_url,
        timeout_seconds=settings.payout_timeout_ms / 1000,
        attempts_max=settings.payout_attempts_max,
        backoff_initial_seconds=settings.payout_backoff_initial_ms / 1000,
        token=revealed(settings.payout_provider_token),
        ca_file=settings.provider_ca_file,
        client_cert=settings.provider_client_cert(),
    )


def call_seconds_max(settings: DisbursementSettings) -> float:
    """The longest one payout batch call takes: each try may look keys up and post, both timing
    out, then pause at most RETRY_WAIT_MAX_FACTOR times the first pause (the provider's retry bound)."""
    timeout_seconds = settings.payout_timeout_ms / 1000
    pause_max_seconds = settings.payout_backoff_initial_ms / 1000 * RETRY_WAIT_MAX_FACTOR
    return settings.payout_attempts_max * (2 * timeout_seconds + pause_max_seconds)


SETTINGS = DisbursementSettings


# Disbursement keeps the payout part of a case's personal data, until its retention after closing;
# a stipend paid or failed, its own decisions, close the case in the transaction that records them.
RETENTION = Retention(SQL, decides=frozenset({StipendDisbursed.TOPIC, StipendFailed.TOPIC}))


def build(settings: DisbursementSettings, database: ServiceDatabase) -> ServiceDefinition:
    named = queries(ChainKey(settings.require_ledger_key()))
    program = handlers.Program(settings.program_amount, settings.program_currency, settings.require_instrument_secret())
    data_key = settings.require_data_key()
    worker = handlers.PayoutWorker(
        database=database,
        queries=named,
        provider=provider(settings),
        data_key=data_key,
        batch_size_max=settings.worker_batch_size_max,
        batch_items_max=settings.payout_batch_items_max,
        concurrency_max=settings.worker_concurrency_max,
        call_seconds_max=call_seconds_max(settings),
    )
    if settings.payout_callback_secret is None:
        raise SystemExit("HOMEWARD_PAYOUT_CALLBACK_SECRET is not set; `homeward up` generates one.")
    callbacks = CallbackEndpoint(
        database=database,
        queries=named,
        secret=settings.payout_callback_secret.get_secret_value().encode(),
        data_key=data_key,
        tolerance_seconds=settings.callback_tolerance_seconds,
        batch_size_max=settings.worker_batch_size_max,
    )
    routes = {
        RegistrationAccepted.TOPIC: Route(
            batch=partial(handlers.handle_accepted, queries=named, program=program, data_key=data_key)
        ),
        ArrivalVerified.TOPIC: Route(batch=partial(handlers.handle_verified, queries=named, program=program)),
    }
    interval, fallback = settings.worker_poll_interval_ms / 1000, settings.worker_fallback_poll_ms / 1000
    batch = settings.worker_batch_size_max
    workers = [
        Worker("payout", worker.pay_reserved, fallback, batch, wakes_on="payouts"),
        Worker("payout-callbacks", callbacks.apply_recorded, fallback, batch, wakes_on="callbacks"),
        Worker("release-held", worker.release_held, interval * 20, batch),
    ]
    return ServiceDefinition(
        name="disbursement",
        routes=routes,
        workers=workers,
        on_start=partial(
            handlers.fund_initial_budget, database.pool, named, settings.program_budget, settings.program_currency
        ),
        http_routes=callbacks.routes(),
        http_routes_port=settings.callback_port,
        health_details=callbacks.stats,
        scrape=partial(handlers.read_gauges, queries=named),
    )
