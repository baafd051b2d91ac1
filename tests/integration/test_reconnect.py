"""A service rides out a database restart: it reconnects without being restarted itself, and
the events that arrived meanwhile are applied once the database is back."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devstack.embedded import EmbeddedPostgres, free_port
from services.runtime.crypto import new_key_hex
from tests.conftest import Infra
from tests.support import Kafka, ServiceRunner, envelope, eventually, outbound_and_dlq_topics, submission

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUBMITTED = "registration.submitted.v1"
ACCEPTED = "registration.accepted.v1"
RECOVERY_SECONDS_MAX = 90.0


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("reconnect")) / "postgres", free_port(), new_key_hex())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def registration(infra: Infra, own_postgres: EmbeddedPostgres) -> Iterator[ServiceRunner]:
    runner = ServiceRunner(
        "registration",
        infra.env(HOMEWARD_DATABASE_URL=own_postgres.url, HOMEWARD_HTTP_PORT=str(free_port())),
    )
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


async def accepted(kafka: Kafka, data: dict) -> None:
    await kafka.send(SUBMITTED, envelope(SUBMITTED, data, source="participant-app"), data["application_id"])
    await eventually(
        lambda: kafka.events(ACCEPTED, application_id=data["application_id"]),
        timeout=RECOVERY_SECONDS_MAX,
        what="acceptance",
    )


async def test_registration_keeps_working_across_a_database_restart(
    infra: Infra, own_postgres: EmbeddedPostgres, registration: ServiceRunner
) -> None:
    async with Kafka(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        await accepted(kafka, submission())
        own_postgres.stop()
        during = submission()
        await kafka.send(SUBMITTED, envelope(SUBMITTED, during, source="participant-app"), during["application_id"])
        own_postgres.start()
        # The submission sent while the database was down is applied once it is back, exactly once.
        await eventually(
            lambda: kafka.events(ACCEPTED, application_id=during["application_id"]),
            timeout=RECOVERY_SECONDS_MAX,
            what="the submission sent during the outage",
        )
        await accepted(kafka, submission())
        assert len(kafka.events(ACCEPTED, application_id=during["application_id"])) == 1
    assert registration.process is not None and registration.process.poll() is None, "the service was not restarted"
