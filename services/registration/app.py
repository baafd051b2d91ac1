"""Registration's route table: who handles which topic, with what dependencies."""

from functools import partial
from pathlib import Path

from contracts.events import (
    ArrivalRejected,
    CaseWithdrawn,
    RegistrationAccepted,
    RegistrationSubmitted,
    StipendDisbursed,
    StipendFailed,
    StipendHeld,
    TravelBookingFailed,
)
from services.registration import handlers
from services.registration.settings import RegistrationSettings
from services.runtime.consumer import Route
from services.runtime.db import load_queries
from services.runtime.redrive import Redrive
from services.runtime.retention import Retention
from services.runtime.service import ServiceDefinition
from services.runtime.uow import ServiceDatabase

SQL = Path(__file__).parent / "adapters" / "sql"


SETTINGS = RegistrationSettings


# An accepted case is handed to travel, arrival and disbursement; it has moved on for good once a
# stipend outcome, a failed booking or a rejected arrival shows up.
REDRIVE = Redrive(
    opens_on=frozenset({RegistrationAccepted.TOPIC}),
    closes_on=frozenset(
        {
            StipendDisbursed.TOPIC,
            StipendHeld.TOPIC,
            StipendFailed.TOPIC,
            TravelBookingFailed.TOPIC,
            ArrivalRejected.TOPIC,
            CaseWithdrawn.TOPIC,
        }
    ),
)


# Registration keeps a copy of each case's `sealed` (its case, its recorded outcome, its outbox).
RETENTION = Retention(SQL)


def build(settings: RegistrationSettings, database: ServiceDatabase) -> ServiceDefinition:
    queries = load_queries(SQL)
    keys = handlers.Keys(settings.require_identity_secret(), settings.require_reader_keys())
    routes = {
        RegistrationSubmitted.TOPIC: Route(
            batch=partial(handlers.handle_submitted, queries=queries, keys=keys),
            on_invalid=partial(handlers.handle_invalid_submission, queries=queries),
        ),
        # Also closes the case for the re-drive and starts its retention: run as one route.
        CaseWithdrawn.TOPIC: Route(batch=partial(handlers.handle_withdrawn, queries=queries)),
    }
    return ServiceDefinition(name="registration", routes=routes)
