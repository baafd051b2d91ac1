"""Batched produce: many records handed to aiokafka as one batch per partition, one future per batch.

`AIOKafkaProducer.send` costs a future, a partitioner call and an accumulator lookup per record;
for a relay or a load generator that sends thousands a second, that was most of the CPU of the
send. Here the records are grouped by (topic, partition) with the same partitioner `send` uses
(murmur2 of the key, so a key lands where `send` would put it), appended to aiokafka batches,
and each batch is queued with `send_batch`. Records of one partition keep their order.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

_partition_of = DefaultPartitioner()


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Sent:
    """One batch on its way: its future resolves (or fails) for all of `records` at once."""

    future: "asyncio.Future[object]"
    records: list[Record]


async def send_batched(producer: AIOKafkaProducer, records: Sequence[Record]) -> list[Sent]:
    """Queues `records` in as few batches as the producer's batch size allows; await each `future`."""
    groups: dict[tuple[str, int], list[Record]] = {}
    partitions: dict[str, list[int]] = {}
    for record in records:
        known = partitions.get(record.topic)
        if known is None:
            known = partitions[record.topic] = sorted(await producer.partitions_for(record.topic))
        groups.setdefault((record.topic, _partition_of(record.key, known, known)), []).append(record)
    sent: list[Sent] = []
    for (topic, partition), group in groups.items():
        batch, members = producer.create_batch(), list[Record]()
        for record in group:
            if not _append(batch, record):
                sent.append(await _queue(producer, batch, topic, partition, members))
                batch, members = producer.create_batch(), []
                # An empty batch takes any record; the broker judges its size.
                _append(batch, record)
            members.append(record)
        sent.append(await _queue(producer, batch, topic, partition, members))
    return sent


def _append(batch: Any, record: Record) -> bool:
    """False when the batch is full (aiokafka then closes it)."""
    return batch.append(key=record.key, value=record.value, timestamp=None, headers=list(record.headers)) is not None


async def _queue(producer: AIOKafkaProducer, batch: Any, topic: str, partition: int, members: list[Record]) -> Sent:
    batch.close()
    future = await producer.send_batch(batch, topic, partition=partition)
    return Sent(future, members)


@dataclass(frozen=True, slots=True)
class KafkaPublisher:
    """`send_batched` on one producer: what the outbox relay publishes with."""

    producer: AIOKafkaProducer

    async def send_batched(self, records: Sequence[Record]) -> list[Sent]:
        return await send_batched(self.producer, records)
