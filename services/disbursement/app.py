"""Disbursement's route table, budget funding and payout worker."""

from functools import partial
from pathlib import Path

import asyncpg

from contracts.events import ArrivalVerified, RegistrationAccepted
from services.disbursement import handlers
from services.disbursement.adapters.provider import SandboxPayoutProvider
from services.runtime.consumer import Route
from services.runtime.db import load_queries, runtime_queries
from services.runtime.service import ServiceDefinition, Worker
from services.runtime.settings import Settings

SQL = Path(__file__).parent / "adapters" / "sql"


def queries() -> handlers.Queries:
    return handlers.Queries(payments=load_queries(SQL / "payments.sql"), ledger=load_queries(SQL / "ledger.sql"))


def build(settings: Settings, pool: asyncpg.Pool) -> ServiceDefinition:
    named = queries()
    program = handlers.Program(settings.program_amount, settings.program_currency)
    worker = handlers.PayoutWorker(
        pool=pool,
        queries=named,
        runtime_queries=runtime_queries(),
        provider=SandboxPayoutProvider(pool),
        data_key=settings.require_data_key(),
        batch_size_max=settings.worker_batch_size_max,
        concurrency_max=settings.worker_concurrency_max,
    )
    routes = {
        RegistrationAccepted.TOPIC: Route(partial(handlers.handle_accepted, queries=named, program=program)),
        ArrivalVerified.TOPIC: Route(partial(handlers.handle_verified, queries=named, program=program)),
    }
    interval = settings.worker_poll_interval_ms / 1000
    workers = [
        Worker("payout", worker.pay_approved, interval, settings.worker_batch_size_max),
        Worker("release-held", worker.release_held, interval * 20, settings.worker_batch_size_max),
    ]
    return ServiceDefinition(
        name="disbursement",
        routes=routes,
        workers=workers,
        on_start=partial(handlers.fund_initial_budget, pool, named, settings.program_budget, settings.program_currency),
    )
