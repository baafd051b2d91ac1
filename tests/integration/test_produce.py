"""Batched produce on the real broker: every record arrives once, on the partition `send` would
have chosen for its key, in order within its partition, with its headers."""

import asyncio
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.devstack.embedded import create_topics
from services.runtime.produce import Record, send_batched
from tests.conftest import Infra

pytestmark = [pytest.mark.integration]

RECORDS = 300
PARTITIONS = 3
# Small, so that each partition's records need several batches.
BATCH_BYTES = 2048
READ_SECONDS_MAX = 20.0


async def test_records_land_where_send_puts_them_in_order(infra: Infra) -> None:
    topics = [f"test.produce.{uuid4().hex[:8]}", f"test.produce.{uuid4().hex[:8]}"]
    await create_topics(infra.kafka_bootstrap, topics, PARTITIONS)
    records = [
        Record(topics[n % 2], f"case-{n % 40}".encode(), f"value-{n}".encode() * 10, (("n", str(n).encode()),))
        for n in range(RECORDS)
    ]
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=False, acks="all", max_batch_size=BATCH_BYTES
    )
    await producer.start()
    try:
        sent = await send_batched(producer, records)
        await asyncio.gather(*(batch.future for batch in sent))
        # The same key through plain `send` lands on the same partition.
        control = await producer.send_and_wait(topics[0], b"control", key=b"case-0")
    finally:
        await producer.stop()
    assert len(sent) > 2 * PARTITIONS, "a small batch size should split the records"
    assert sum(len(batch.records) for batch in sent) == RECORDS

    received = await _read_all(infra.kafka_bootstrap, topics, RECORDS + 1)
    by_value = {value: (topic, partition, key, headers) for topic, partition, key, value, headers in received}
    assert by_value[b"control"][1] == control.partition
    assert {by_value[r.value][1] for r in records if r.key == b"case-0" and r.topic == topics[0]} == {control.partition}
    assert len(received) == RECORDS + 1
    for record in records:
        topic, _, key, headers = by_value[record.value]
        assert (topic, key, headers) == (record.topic, record.key, list(record.headers))
    for topic in topics:
        for partition in range(PARTITIONS):
            order = [int(h[0][1]) for t, p, _, v, h in received if (t, p) == (topic, partition) and v != b"control"]
            assert order == sorted(order)


async def _read_all(bootstrap: str, topics: list[str], count: int) -> list[tuple[str, int, bytes, bytes, list]]:
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[tuple[str, int, bytes, bytes, list]] = []
    try:
        async with asyncio.timeout(READ_SECONDS_MAX):
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    found += [(r.topic, r.partition, r.key, r.value, list(r.headers)) for r in records]
    finally:
        await consumer.stop()
    return found
