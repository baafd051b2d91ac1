"""Registration's route table: who handles which topic, with what dependencies."""

from functools import partial
from pathlib import Path

import asyncpg

from contracts.events import RegistrationSubmitted
from services.registration import handlers
from services.runtime.consumer import Route
from services.runtime.db import load_queries
from services.runtime.service import ServiceDefinition
from services.runtime.settings import Settings

SQL = Path(__file__).parent / "adapters" / "sql"


def build(settings: Settings, pool: asyncpg.Pool) -> ServiceDefinition:
    queries = load_queries(SQL)
    keys = handlers.Keys(settings.require_identity_secret(), settings.require_data_key())
    routes = {
        RegistrationSubmitted.TOPIC: Route(
            handler=partial(handlers.handle_submitted, queries=queries, keys=keys),
            on_invalid=partial(handlers.handle_invalid_submission, queries=queries),
        ),
    }
    return ServiceDefinition(name="registration", routes=routes)
