"""Session infrastructure for the integration tier: a real PostgreSQL and a real Kafka-protocol
broker (tansu), both embedded, or an existing PostgreSQL when HOMEWARD_TEST_DATABASE_URL says so."""

import asyncio
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest

from contracts.registry import all_topics
from services.devstack.embedded import EMBEDDED_BROKER_CLIENT_SETTINGS
from services.runtime.crypto import new_key_hex
from tests.support import PayoutSandbox, TravelSandbox

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

TEST_PARTITIONS = 3


@dataclass(frozen=True)
class Infra:
    database_url: str
    kafka_bootstrap: str
    identity_secret: str
    data_key: str
    payouts_url: str
    callback_secret: str
    http_port: int
    travel_url: str
    callback_port: int

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HOMEWARD_DATABASE_URL": self.database_url,
            "HOMEWARD_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "HOMEWARD_IDENTITY_SECRET": self.identity_secret,
            "HOMEWARD_DATA_KEY": self.data_key,
            "HOMEWARD_LOG_LEVEL": "INFO",
            "HOMEWARD_PAYOUT_PROVIDER_URL": self.payouts_url,
            "HOMEWARD_PAYOUT_CALLBACK_SECRET": self.callback_secret,
            "HOMEWARD_TRAVEL_PROVIDER_URL": self.travel_url,
            "HOMEWARD_HTTP_PORT": str(self.http_port),
            "HOMEWARD_CALLBACK_PORT": str(self.callback_port),  # read by disbursement only
            # Modules start and stop services of the same consumer groups one after another; a member
            # that went away without leaving should free its partitions in seconds, not in 10 to 18.
            **EMBEDDED_BROKER_CLIENT_SETTINGS,
            **extra,
        }


def _database(tmp: Path) -> tuple[str, object | None]:
    """A fresh database: in the server named by HOMEWARD_TEST_DATABASE_URL, or an embedded one."""
    existing = os.environ.get("HOMEWARD_TEST_DATABASE_URL")
    if existing:
        name = f"homeward_test_{uuid4().hex[:8]}"
        with psycopg.connect(existing, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return existing.rsplit("/", 1)[0] + f"/{name}", None
    from services.devstack.embedded import EmbeddedPostgres, free_port

    server = EmbeddedPostgres(tmp / "postgres", free_port())
    server.start()
    return server.url, server


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    from services.devstack.embedded import EmbeddedKafka, create_topics, free_port

    tmp = tmp_path_factory.mktemp("infra")
    database_url, postgres = _database(tmp)
    kafka = EmbeddedKafka(free_port(), tmp / "kafka.log")
    kafka.start()
    callback_secret, disbursement_port, callback_port = new_key_hex(), free_port(), free_port()
    sandbox = PayoutSandbox(
        tmp / "payouts.sqlite3",
        HOMEWARD_PAYOUT_CALLBACK_URL=f"http://127.0.0.1:{callback_port}/callbacks/payouts",
        HOMEWARD_PAYOUT_CALLBACK_SECRET=callback_secret,
    )
    travel = TravelSandbox(tmp / "travel.sqlite3")
    try:
        asyncio.run(create_topics(kafka.bootstrap, all_topics(), TEST_PARTITIONS))
        sandbox.start()
        travel.start()
        yield Infra(
            database_url, kafka.bootstrap, new_key_hex(), new_key_hex(), sandbox.url, callback_secret,
            disbursement_port, travel.url, callback_port,
        )  # fmt: skip
    finally:
        travel.stop()
        sandbox.stop()
        kafka.stop()
        if postgres is not None:
            postgres.stop()  # type: ignore[attr-defined]
