"""A record batch the service cannot read does not stop its partition: registration, run without
the library behind snappy, lz4 and zstd, steps over an lz4 batch, answers what comes after it,
counts the batch in /metrics, logs its offsets once and records them for `homeward dlq unreadable`."""

import json
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Infra
from tests.integration.helpers import ACCEPTED, SUBMITTED, Collector, start_service
from tests.support import ServiceRunner, envelope, eventually, homeward_cli, outbound_and_dlq_topics, submission

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("registration")]

PARTITION = 0


@pytest.fixture(scope="module")
def registration(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceRunner]:
    # aiokafka reads snappy, lz4 and zstd through cramjam; a module of that name that fails to
    # import, first on the path, is a process without it.
    hidden = tmp_path_factory.mktemp("without-cramjam")
    (hidden / "cramjam.py").write_text('raise ImportError("cramjam is hidden by the test")\n')
    yield from start_service("registration", infra, PYTHONPATH=str(hidden))


async def send(infra: Infra, codec: str, data: dict[str, str]) -> int:
    """Publishes one submission as its own batch compressed with `codec`; returns its offset."""
    app = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=False, compression_type=codec)
    await app.start()
    try:
        value = json.dumps(envelope(SUBMITTED, data, source="participant-app")).encode()
        sent = await app.send_and_wait(SUBMITTED, value, key=data["application_id"].encode(), partition=PARTITION)
        return int(sent.offset)
    finally:
        await app.stop()


def unreadable_batches_counted(infra: Infra) -> float:
    text = httpx.get(f"http://127.0.0.1:{infra.http_port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "homeward_unreadable_batches_total"
        and sample.labels == {"topic": SUBMITTED, "reason": "codec_unavailable"}
    )


async def test_an_unreadable_batch_is_stepped_over_counted_and_reported(
    infra: Infra, registration: ServiceRunner, database: asyncpg.Connection, tmp_path: Path
):
    before, unreadable, after = submission(), submission(), submission()
    async with Collector(infra.kafka_bootstrap, outbound_and_dlq_topics()) as kafka:
        await send(infra, "gzip", before)
        offset = await send(infra, "lz4", unreadable)
        await send(infra, "gzip", after)
        for data in (before, after):
            await eventually(lambda data=data: kafka.events(ACCEPTED, application_id=data["application_id"]),
                             what="the readable submissions around the lz4 batch accepted")  # fmt: skip
        assert kafka.events(ACCEPTED, application_id=unreadable["application_id"]) == []

    assert unreadable_batches_counted(infra) == 1
    logged = [json.loads(line) for line in registration.lines if '"consumer.batch_unreadable"' in line]
    assert [(entry["topic"], entry["partition"], entry["first_offset"], entry["last_offset"]) for entry in logged] == [
        (SUBMITTED, PARTITION, offset, offset)
    ]
    assert logged[0]["codec"] == "lz4" and logged[0]["level"] == "error"

    row = await eventually(
        lambda: database.fetchrow(
            "SELECT * FROM registration.unreadable_batches WHERE topic = $1 AND partition = $2 AND first_offset = $3",
            SUBMITTED, PARTITION, offset,
        ),
        what="the skipped batch recorded",
    )  # fmt: skip
    assert (row["last_offset"], row["codec"], row["reason"]) == (offset, "lz4", "codec_unavailable")

    listed = homeward_cli(
        "dlq", "unreadable", "--service", "registration", "--json",
        HOMEWARD_DATABASE_URL=infra.database_url, HOMEWARD_STATE_DIR=str(tmp_path),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert {(entry["topic"], entry["first_offset"], entry["codec"]) for entry in json.loads(listed.stdout)} >= {
        (SUBMITTED, offset, "lz4")
    }
