"""Record batches no client can read are stepped over, counted and reported, never a wedge.

A Kafka fetch returns record batches; when one is compressed with a codec whose library this
process lacks, or its bytes are corrupt (bad CRC, a payload that does not decompress), aiokafka
raises out of `getmany` on every poll, and FastStream retries the poll forever: the partition
stops, and with it every later record on it, readable or not. Worse, the records drained from
other partitions in that same poll are dropped while their positions advance.

`install()` puts a guard between aiokafka's fetcher and the batches it unpacks. A batch that
cannot be read is presented to aiokafka as a control batch (the kind it already steps over
without yielding records), so the partition moves on at the batch's own end offset. Each skip is
logged once at error level with topic, partition and offsets, counted in `/metrics`, and queued
for the service to record in its `unreadable_batches` table, where `homeward dlq unreadable` shows
it. The records themselves were never decoded, so there is nothing to dead-letter: they stay on
the broker until retention, for a client that has the codec, and with their producer.

aiokafka offers no hook for this; the guard wraps its `PartitionRecords` (pinned by the version
range in pyproject.toml and by the unit tests of this module).
"""

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import codec
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException

from services.runtime import metrics

PENDING_REPORTS_MAX = 10_000
"""Skips waiting to be written to the database; past this the oldest go (still logged and counted)."""
REPORTED_KEYS_MAX = 10_000
"""Batches this process remembers having reported: a rewind (a batch retried after a failed
transaction) fetches the same batch again, and that is the same occurrence, not a new one."""

CODEC_MASK = 0x07
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
CODEC_AVAILABLE: dict[str, Callable[[], bool]] = {
    "gzip": codec.has_gzip,
    "snappy": codec.has_snappy,
    "lz4": codec.has_lz4,
    "zstd": codec.has_zstd,
}

REASON_CODEC_UNAVAILABLE = "codec_unavailable"
REASON_CORRUPT = "corrupt_batch"

logger = structlog.get_logger("homeward.consumer")


@dataclass(frozen=True)
class UnreadableBatch:
    """What an operator needs to get the records again from their producer."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    codec: str
    reason: str
    detail: str


_pending: deque[UnreadableBatch] = deque(maxlen=PENDING_REPORTS_MAX)
_reported: OrderedDict[tuple[str, int, int], None] = OrderedDict()
_pending_lock = threading.Lock()


def drain() -> list[UnreadableBatch]:
    """The skips seen since the last call, oldest first."""
    with _pending_lock:
        taken = list(_pending)
        _pending.clear()
    return taken


def requeue(batches: list[UnreadableBatch]) -> None:
    """Puts back skips that could not be recorded (the database was away), ahead of newer ones;
    if that is more than the queue holds, the oldest go."""
    global _pending
    with _pending_lock:
        _pending = deque([*batches, *_pending], maxlen=PENDING_REPORTS_MAX)


def _first_report(key: tuple[str, int, int]) -> bool:
    """Whether this process has not reported the batch at `key` before (and remembers it now)."""
    with _pending_lock:
        if key in _reported:
            return False
        _reported[key] = None
        if len(_reported) > REPORTED_KEYS_MAX:
            _reported.popitem(last=False)
        return True


def _codec_name(batch: Any) -> str:
    attributes = getattr(batch, "attributes", 0) or 0
    return CODECS.get(attributes & CODEC_MASK, f"unknown-{attributes & CODEC_MASK:#04x}")


def _report(tp: Any, batch: Any, reason: str, detail: str) -> None:
    if not _first_report((tp.topic, tp.partition, batch.base_offset)):
        return
    skipped = UnreadableBatch(
        topic=tp.topic,
        partition=tp.partition,
        first_offset=batch.base_offset,
        last_offset=batch.next_offset - 1,
        codec=_codec_name(batch),
        reason=reason,
        detail=detail,
    )
    logger.error(
        "consumer.batch_unreadable",
        topic=skipped.topic,
        partition=skipped.partition,
        first_offset=skipped.first_offset,
        last_offset=skipped.last_offset,
        codec=skipped.codec,
        reason=reason,
        detail=detail,
        hint="the partition moved past these offsets; get the records again from their producer, "
        "or read them with a client that has the codec, then list them with `homeward dlq unreadable`",
    )
    metrics.UNREADABLE_BATCHES.labels(skipped.topic, reason).inc()
    metrics.UNREADABLE_RECORDS.labels(skipped.topic).inc(skipped.last_offset - skipped.first_offset + 1)
    with _pending_lock:
        _pending.append(skipped)


class _GuardedBatch:
    """One batch, read in full before aiokafka sees it; an unreadable one poses as a control batch."""

    def __init__(self, tp: Any, batch: Any) -> None:
        self._batch = batch
        self._records: list[Any] = []
        self._error: Exception | None = None
        self.unreadable = False
        # Message formats v0 and v1 (before Kafka 0.11) carry no batch header to step by; they
        # pass through unguarded, as aiokafka reads them.
        self._legacy = not hasattr(batch, "base_offset")
        if self._legacy or batch.is_control_batch:
            self._crc_valid = self._legacy or bool(batch.validate_crc())
            return
        reason, detail = self._problem()
        if reason is None:
            return
        if batch.next_offset <= batch.base_offset:
            # No end to step to: the batch is refused as aiokafka refuses it, not dropped as empty.
            self._error = CorruptRecordException(f"{detail}; the batch's end offset cannot be trusted")
            return
        self.unreadable = True
        _report(tp, batch, reason, detail)

    def _problem(self) -> tuple[str | None, str]:
        # aiokafka's C batch checks its CRC only before iteration, so the answer is kept for later.
        self._crc_valid = bool(self._batch.validate_crc())
        if not self._crc_valid:
            return REASON_CORRUPT, "CRC mismatch"
        name = _codec_name(self._batch)
        available = CODEC_AVAILABLE.get(name)
        if name != "none" and (available is None or not available()):
            return REASON_CODEC_UNAVAILABLE, f"no {name} library in this process"
        try:
            self._records = list(self._batch)
        except Exception as error:  # whatever a codec raises on bytes it cannot read
            return REASON_CORRUPT, f"{type(error).__name__}: {error}"[:200]
        return None, ""

    def validate_crc(self) -> bool:
        if self._legacy:
            return bool(self._batch.validate_crc())
        return self.unreadable or self._crc_valid

    @property
    def is_control_batch(self) -> bool:
        return self.unreadable or bool(self._batch.is_control_batch)

    @property
    def producer_id(self) -> Any:
        return None if self.unreadable else self._batch.producer_id

    def __iter__(self) -> Iterator[Any]:
        if self._legacy or self._batch.is_control_batch:
            return iter(self._batch)
        if self._error is not None:
            raise self._error
        return iter(self._records)

    def __next__(self) -> Any:
        return next(self._batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)


class _GuardedRecords:
    """A fetch response's batches, each behind a guard."""

    def __init__(self, tp: Any, records: Any) -> None:
        self._tp = tp
        self._records = records

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> _GuardedBatch:
        return _GuardedBatch(self._tp, self._records.next_batch())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)


_UNGUARDED = fetcher.PartitionRecords


class GuardedPartitionRecords(_UNGUARDED):  # type: ignore[misc, valid-type]
    def __init__(self, tp: Any, records: Any, *arguments: Any, **options: Any) -> None:
        super().__init__(tp, _GuardedRecords(tp, records), *arguments, **options)


def install() -> None:
    """Guards every aiokafka consumer of this process; safe to call more than once."""
    fetcher.PartitionRecords = GuardedPartitionRecords


def installed() -> bool:
    return fetcher.PartitionRecords is GuardedPartitionRecords


async def record(pool: Any, runtime_queries: Any) -> int:
    """Writes the skips seen so far to the service's `unreadable_batches` table; one worker step."""
    # One row per batch in a statement: ON CONFLICT cannot touch the same row twice.
    batches = list({(batch.topic, batch.partition, batch.first_offset): batch for batch in drain()}.values())
    if not batches:
        return 0
    try:
        async with pool.acquire() as connection:
            await runtime_queries.record_unreadable(
                connection,
                topics=[batch.topic for batch in batches],
                partitions=[batch.partition for batch in batches],
                first_offsets=[batch.first_offset for batch in batches],
                last_offsets=[batch.last_offset for batch in batches],
                codecs=[batch.codec for batch in batches],
                reasons=[batch.reason for batch in batches],
                details=[batch.detail for batch in batches],
            )
    except BaseException:
        requeue(batches)
        raise
    return len(batches)
