"""Arrival's route table, its attestation key and its sweeper (evidence windows, withdrawals waiting)."""

from datetime import timedelta
from functools import partial
from pathlib import Path

import structlog

from contracts.events import (
    EVIDENCE_TOPIC,
    ArrivalVerified,
    RegistrationAccepted,
    StipendDisbursed,
    StipendFailed,
    StipendHeld,
    TravelBooked,
    WithdrawalRequested,
)
from services.arrival import handlers
from services.arrival.settings import ArrivalSettings
from services.runtime.consumer import Route
from services.runtime.db import load_queries
from services.runtime.redrive import Redrive
from services.runtime.service import ServiceDefinition, Worker
from services.runtime.uow import ServiceDatabase

SQL = Path(__file__).parent / "adapters" / "sql"
logger = structlog.get_logger("homeward.arrival")


SETTINGS = ArrivalSettings


# A verified arrival is handed to disbursement; any stipend outcome shows it arrived.
REDRIVE = Redrive(
    opens_on=frozenset({ArrivalVerified.TOPIC}),
    closes_on=frozenset({StipendDisbursed.TOPIC, StipendHeld.TOPIC, StipendFailed.TOPIC}),
)


def build(settings: ArrivalSettings, database: ServiceDatabase) -> ServiceDefinition:
    queries = load_queries(SQL)
    policy = handlers.Policy(
        window=timedelta(seconds=settings.arrival_window_seconds),
        signer=settings.require_attestation_keys(),
        withdrawal_case_wait=timedelta(seconds=settings.withdrawal_case_wait_seconds),
    )
    routes = {
        RegistrationAccepted.TOPIC: Route(batch=partial(handlers.handle_accepted, queries=queries, policy=policy)),
        TravelBooked.TOPIC: Route(batch=partial(handlers.handle_booked, queries=queries, policy=policy)),
        EVIDENCE_TOPIC: Route(
            batch=partial(handlers.handle_evidence, queries=queries, policy=policy),
            admit=partial(handlers.admit_evidence, queries=queries) if settings.evidence_auth == "required" else None,
        ),
        WithdrawalRequested.TOPIC: Route(batch=partial(handlers.handle_withdrawal_requested, queries=queries)),
        # Also closes the case for the re-drive (REDRIVE.closes_on): the two are run as one route.
        StipendDisbursed.TOPIC: Route(batch=partial(handlers.handle_disbursed, queries=queries)),
    }
    if settings.evidence_auth == "off":
        logger.warning(
            "arrival.evidence_auth_off", hint="unsigned evidence counts until HOMEWARD_EVIDENCE_AUTH=required"
        )
    sweeper = handlers.WindowSweeper(database, queries, policy, settings.worker_batch_size_max)
    workers = [
        Worker("window-sweep", sweeper.sweep, settings.arrival_sweep_interval_ms / 1000, settings.worker_batch_size_max)
    ]
    return ServiceDefinition(name="arrival", routes=routes, workers=workers)
