"""Every codec Kafka defines, against the real broker: registrations and evidence compressed with
none, gzip, snappy, lz4 or zstd are answered, by aiokafka producers and by a librdkafka one, and
a partition that mixes codecs is applied in the order it was written."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from services.devstack.embedded import free_port
from tests.conftest import Infra
from tests.integration.helpers import (
    ACCEPTED,
    EVIDENCE,
    SUBMITTED,
    VERIFIED,
    Collector,
    now,
    partner_office,
    start_service,
)  # fmt: skip
from tests.integration.test_arrival import new_case, open_case
from tests.support import ServiceRunner, envelope, eventually, evidence_headers, outbound_and_dlq_topics, submission

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("registration", "arrival")]

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
SUBMISSIONS_PER_CODEC = 4
MIXED_ROUNDS = 3
LIBRDKAFKA_FLUSH_SECONDS = 30.0


@pytest.fixture(scope="module")
def registration(infra: Infra) -> Iterator[ServiceRunner]:
    yield from start_service("registration", infra)


@pytest.fixture(scope="module")
def arrival(infra: Infra) -> Iterator[ServiceRunner]:
    # Beside registration in this module, so on an HTTP port of its own.
    yield from start_service("arrival", infra, HOMEWARD_HTTP_PORT=str(free_port()))


@asynccontextmanager
async def producer(infra: Infra, codec: str) -> AsyncIterator[AIOKafkaProducer]:
    """An upstream app's aiokafka producer that compresses with `codec` (a batch per send_and_wait)."""
    client = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=False, acks="all",
        compression_type=None if codec == "none" else codec,
    )  # fmt: skip
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


def collector(infra: Infra) -> Collector:
    return Collector(infra.kafka_bootstrap, outbound_and_dlq_topics())


async def accepted_all(kafka: Collector, applications: list[str]) -> None:
    await eventually(
        lambda: all(kafka.events(ACCEPTED, application_id=application) for application in applications),
        what=f"{len(applications)} registrations accepted",
    )


@pytest.mark.parametrize("codec", CODECS)
async def test_registrations_in_every_codec_are_answered(infra: Infra, codec: str):
    submissions = [submission() for _ in range(SUBMISSIONS_PER_CODEC)]
    async with collector(infra) as kafka, producer(infra, codec) as app:
        for data in submissions:
            value = json.dumps(envelope(SUBMITTED, data, source="participant-app")).encode()
            await app.send_and_wait(SUBMITTED, value, key=data["application_id"].encode())
        await accepted_all(kafka, [data["application_id"] for data in submissions])
        assert kafka.dead_letters(SUBMITTED) == []


@pytest.mark.parametrize("codec", CODECS)
async def test_evidence_in_every_codec_verifies_the_arrival(infra: Infra, database: asyncpg.Connection, codec: str):
    case = new_case(infra)
    async with collector(infra) as kafka, producer(infra, codec) as office:
        await open_case(kafka, database, case)
        value = json.dumps(envelope(EVIDENCE, partner_office(case.case_id, observed_at=now()))).encode()
        await office.send_and_wait(EVIDENCE, value, key=case.key.encode(), headers=evidence_headers(EVIDENCE, value))
        [event] = await eventually(lambda: kafka.events(VERIFIED, case_id=case.key), what=f"{VERIFIED} ({codec})")
    assert event["data"]["rule"] == "partner_office"


async def test_a_partition_of_mixed_codecs_is_applied_in_the_order_written(infra: Infra, database: asyncpg.Connection):
    written: list[str] = []
    async with collector(infra) as kafka:
        async with contextlib.AsyncExitStack() as stack:
            apps = {codec: await stack.enter_async_context(producer(infra, codec)) for codec in CODECS}
            for _ in range(MIXED_ROUNDS):
                for codec in CODECS:
                    data = submission()
                    value = json.dumps(envelope(SUBMITTED, data, source="participant-app")).encode()
                    await apps[codec].send_and_wait(SUBMITTED, value, key=data["application_id"].encode(), partition=0)
                    written.append(data["application_id"])
        await accepted_all(kafka, written)

    # The outbox numbers registration's events in the order its handlers emitted them.
    rows = await database.fetch("SELECT value FROM registration.outbox WHERE topic = $1 ORDER BY id", ACCEPTED)
    order = [json.loads(row["value"])["data"]["application_id"] for row in rows]
    applied = [application for application in order if application in set(written)]
    assert applied == written


@pytest.mark.parametrize("codec", CODECS)
async def test_a_librdkafka_producer_in_every_codec_is_answered(infra: Infra, codec: str):
    """A second, independent client: librdkafka (confluent-kafka), as many upstream apps run it."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    submissions = [submission() for _ in range(SUBMISSIONS_PER_CODEC)]
    app = confluent_kafka.Producer(
        {"bootstrap.servers": infra.kafka_bootstrap, "compression.type": codec, "acks": "all", "linger.ms": 5}
    )
    failures: list[Any] = []
    for data in submissions:
        value = json.dumps(envelope(SUBMITTED, data, source="participant-app")).encode()
        app.produce(SUBMITTED, value, key=data["application_id"], on_delivery=lambda error, _: failures.append(error))
    assert await asyncio.to_thread(app.flush, LIBRDKAFKA_FLUSH_SECONDS) == 0
    assert [error for error in failures if error is not None] == []
    async with collector(infra) as kafka:
        await accepted_all(kafka, [data["application_id"] for data in submissions])
