"""Session infrastructure for the integration tier: a real PostgreSQL and a real Kafka-protocol
broker (tansu), both embedded, or an existing PostgreSQL when HOMEWARD_TEST_DATABASE_URL says so."""

import asyncio
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest

from contracts.registry import all_topics
from services.devstack.embedded import EMBEDDED_BROKER_CLIENT_SETTINGS
from services.runtime.crypto import Keyring, new_key_hex
from services.runtime.settings import SERVICE_NAMES
from tests.support import TEST_ATTESTATION_KEYS, TEST_INSTRUMENT_SECRET, TEST_LEDGER_KEY, PayoutSandbox, TravelSandbox

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

TEST_PARTITIONS = 3


@dataclass(frozen=True)
class Infra:
    database_url: str
    """The administrator's: tests read and arrange any schema with it."""
    kafka_bootstrap: str
    identity_secret: str
    data_key: str
    """Registration's own (its dead letters); travel's and disbursement's are `data_keys`."""
    payouts_url: str
    callback_secret: str
    http_port: int
    travel_url: str
    callback_port: int
    role_urls: dict[str, str] = field(default_factory=dict)
    """Each login role's URL (services/runtime/roles.py): a service under test logs in as its own."""
    data_keys: dict[str, str] = field(default_factory=dict)
    """Each holder's own data key (travel's and disbursement's open their parts of `sealed`)."""

    def service_env(self, service: str, **extra: str) -> dict[str, str]:
        """What a service under test runs with: `env`, logged in as the service's own role, with
        its own data key."""
        own = {"HOMEWARD_DATABASE_URL": self.role_urls[service]}
        if service in self.data_keys:
            own["HOMEWARD_DATA_KEY"] = self.data_keys[service]
        return self.env(**{**own, **extra})

    def keyring(self, service: str) -> Keyring:
        return Keyring(bytes.fromhex(self.data_keys[service]))

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HOMEWARD_DATABASE_URL": self.database_url,
            "HOMEWARD_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "HOMEWARD_IDENTITY_SECRET": self.identity_secret,
            "HOMEWARD_DATA_KEY": self.data_key,
            "HOMEWARD_TRAVEL_DATA_KEY": self.data_keys["travel"],
            "HOMEWARD_DISBURSEMENT_DATA_KEY": self.data_keys["disbursement"],
            "HOMEWARD_LOG_LEVEL": "INFO",
            "HOMEWARD_PAYOUT_PROVIDER_URL": self.payouts_url,
            "HOMEWARD_PAYOUT_CALLBACK_SECRET": self.callback_secret,
            "HOMEWARD_LEDGER_KEY": TEST_LEDGER_KEY,
            "HOMEWARD_ATTESTATION_KEYS": TEST_ATTESTATION_KEYS,
            "HOMEWARD_INSTRUMENT_SECRET": TEST_INSTRUMENT_SECRET,
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

    server = EmbeddedPostgres(tmp / "postgres", free_port(), new_key_hex())
    server.start()
    return server.url, server


def _provision(database_url: str) -> dict[str, str]:
    """The roles, as `homeward up` makes them, and every schema migrated as its owner: the URL of
    each login role. (Roles belong to the whole server: with HOMEWARD_TEST_DATABASE_URL, two test
    sessions at once on one server would set each other's passwords.)"""
    from services.runtime.migrate import migrate, migrate_audit
    from services.runtime.roles import LOGINS, provision, role_url

    passwords = {login: new_key_hex() for login in LOGINS}
    provision(database_url, passwords)
    for service in SERVICE_NAMES:
        migrate(database_url, service)
    migrate_audit(database_url)
    return {login: role_url(database_url, login, password) for login, password in passwords.items()}


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    from services.devstack.embedded import EmbeddedKafka, create_topics, free_port

    tmp = tmp_path_factory.mktemp("infra")
    database_url, postgres = _database(tmp)
    role_urls = _provision(database_url)
    kafka = EmbeddedKafka(free_port(), tmp / "kafka.log")
    kafka.start()
    callback_secret, disbursement_port, callback_port = new_key_hex(), free_port(), free_port()
    sandbox = PayoutSandbox(
        tmp / "payouts.sqlite3",
        HOMEWARD_PAYOUT_CALLBACK_URL=f"http://127.0.0.1:{callback_port}/callbacks/payouts",
        HOMEWARD_PAYOUT_CALLBACK_SECRET=callback_secret,
    )
    # Flights leave a day after booking, so that a withdrawn case's ticket can still be cancelled.
    travel = TravelSandbox(tmp / "travel.sqlite3", HOMEWARD_SANDBOX_FLIGHT_DEPARTURE_DELAY_SECONDS="86400")
    data_keys = {holder: new_key_hex() for holder in ("registration", "travel", "disbursement")}
    try:
        asyncio.run(create_topics(kafka.bootstrap, all_topics(), TEST_PARTITIONS))
        sandbox.start()
        travel.start()
        yield Infra(
            database_url, kafka.bootstrap, new_key_hex(), data_keys["registration"], sandbox.url, callback_secret,
            disbursement_port, travel.url, callback_port, role_urls, data_keys,
        )  # fmt: skip
    finally:
        travel.stop()
        sandbox.stop()
        kafka.stop()
        if postgres is not None:
            postgres.stop()  # type: ignore[attr-defined]
