"""The guard between aiokafka's fetcher and the record batches it unpacks, on batches built here:
readable ones pass untouched in order, an unreadable one is stepped over at its own end offset
and reported once; nothing around it is lost."""

import struct
from collections.abc import Iterator

import pytest
from aiokafka import codec
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from services.runtime import unreadable

TP = TopicPartition("registration.submitted.v1", 0)
READ_UNCOMMITTED = 0
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
# Offsets of a v2 batch header (Kafka's RecordBatch layout): the CRC covers everything after it.
CRC_AT = 17
ATTRIBUTES_AT = 21
RECORDS_AT = 61


def batch(base_offset: int, records: int, codec_name: str) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=CODEC_IDS[codec_name], is_transactional=False,
        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    for index in range(records):
        builder.append(index, timestamp=None, key=b"key", value=f"value-{base_offset + index}".encode(), headers=[])
    built = bytearray(builder.build())
    struct.pack_into(">q", built, 0, base_offset)
    return bytes(built)


def with_crc(raw: bytearray) -> bytes:
    struct.pack_into(">I", raw, CRC_AT, calc_crc32c(bytes(raw[ATTRIBUTES_AT:])))
    return bytes(raw)


def unpack(raw: bytes, *, check_crcs: bool = True) -> tuple[list[bytes], int]:
    """What a consumer gets from one fetched partition: the values, and where it fetches next."""
    records = fetcher.PartitionRecords(TP, MemoryRecords(raw), [], 0, None, None, check_crcs, READ_UNCOMMITTED)
    values = [record.value for record in records]
    return values, records.next_fetch_offset


@pytest.fixture(autouse=True)
def guarded() -> Iterator[None]:
    unreadable.install()
    unreadable.drain()
    unreadable._reported.clear()
    yield
    unreadable.drain()
    unreadable._reported.clear()


def hide_cramjam(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as one without the library behind snappy, lz4 and zstd (after building batches)."""
    monkeypatch.setattr(codec, "cramjam", None)


def values(first: int, last: int) -> list[bytes]:
    return [f"value-{offset}".encode() for offset in range(first, last + 1)]


@pytest.mark.parametrize("codec_name", CODEC_IDS)
def test_batches_of_every_codec_are_read_whole(codec_name: str):
    raw = batch(0, 2, "none") + batch(2, 3, codec_name) + batch(5, 2, "gzip")
    assert unpack(raw) == (values(0, 6), 7)
    assert unreadable.drain() == []


def test_without_the_codec_library_the_batch_is_stepped_over_and_reported(monkeypatch: pytest.MonkeyPatch):
    raw = batch(0, 2, "none") + batch(2, 3, "lz4") + batch(5, 2, "gzip")
    hide_cramjam(monkeypatch)
    assert unpack(raw) == (values(0, 1) + values(5, 6), 7)
    [skipped] = unreadable.drain()
    assert skipped == unreadable.UnreadableBatch(
        TP.topic, 0, 2, 4, "lz4", unreadable.REASON_CODEC_UNAVAILABLE, "no lz4 library in this process"
    )


def test_unguarded_aiokafka_raises_on_the_same_bytes(monkeypatch: pytest.MonkeyPatch):
    """Why the guard exists: the error ends the fetch, and FastStream polls again into the same batch."""
    raw = batch(0, 2, "none") + batch(2, 3, "lz4")
    hide_cramjam(monkeypatch)
    monkeypatch.setattr(fetcher, "PartitionRecords", unreadable._UNGUARDED)
    with pytest.raises(Exception, match="lz4"):
        unpack(raw)


@pytest.mark.parametrize("check_crcs", [True, False])
def test_a_batch_with_a_bad_crc_is_stepped_over(check_crcs: bool):
    damaged = bytearray(batch(3, 2, "zstd"))
    damaged[-1] ^= 0xFF
    raw = batch(0, 3, "none") + bytes(damaged) + batch(5, 1, "none")
    assert unpack(raw, check_crcs=check_crcs) == (values(0, 2) + values(5, 5), 6)
    [skipped] = unreadable.drain()
    assert (skipped.first_offset, skipped.last_offset, skipped.reason) == (3, 4, unreadable.REASON_CORRUPT)


def test_a_payload_that_does_not_decompress_is_stepped_over():
    """A producer's damaged bytes under a correct CRC: only decompressing them finds out."""
    damaged = bytearray(batch(1, 2, "gzip"))
    damaged[RECORDS_AT:] = b"\x00" * (len(damaged) - RECORDS_AT)
    raw = batch(0, 1, "none") + with_crc(damaged) + batch(3, 1, "none")
    assert unpack(raw) == (values(0, 0) + values(3, 3), 4)
    [skipped] = unreadable.drain()
    assert (skipped.first_offset, skipped.last_offset, skipped.codec, skipped.reason) == (
        1, 2, "gzip", unreadable.REASON_CORRUPT,
    )  # fmt: skip


def test_an_unknown_codec_is_stepped_over():
    strange = bytearray(batch(0, 2, "none"))
    strange[ATTRIBUTES_AT + 1] |= 0x07
    raw = with_crc(strange) + batch(2, 1, "none")
    assert unpack(raw) == (values(2, 2), 3)
    [skipped] = unreadable.drain()
    assert (skipped.codec, skipped.reason) == ("unknown-0x07", unreadable.REASON_CODEC_UNAVAILABLE)


def test_skips_not_yet_recorded_are_kept_in_order_when_put_back(monkeypatch: pytest.MonkeyPatch):
    first, second = batch(0, 1, "lz4") + batch(1, 1, "snappy"), batch(2, 1, "zstd")
    hide_cramjam(monkeypatch)
    unpack(first)
    taken = unreadable.drain()
    unpack(second)
    unreadable.requeue(taken)
    assert [skipped.first_offset for skipped in unreadable.drain()] == [0, 1, 2]


def test_install_is_idempotent():
    unreadable.install()
    unreadable.install()
    assert unreadable.installed()
    assert fetcher.PartitionRecords.__mro__[1] is unreadable._UNGUARDED


def test_a_batch_fetched_again_after_a_rewind_is_reported_once(monkeypatch: pytest.MonkeyPatch):
    """A failed transaction rewinds the partition, so the same batch comes back: the same occurrence."""
    raw = batch(0, 1, "none") + batch(1, 2, "lz4") + batch(3, 1, "none")
    hide_cramjam(monkeypatch)
    assert unpack(raw) == unpack(raw) == (values(0, 0) + values(3, 3), 4)
    assert [skipped.first_offset for skipped in unreadable.drain()] == [1]


def test_put_back_skips_beyond_the_bound_drop_the_oldest(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(unreadable, "_pending", unreadable.deque(maxlen=3))
    monkeypatch.setattr(unreadable, "PENDING_REPORTS_MAX", 3)
    older = [unreadable.UnreadableBatch("t", 0, offset, offset, "lz4", "codec_unavailable", "") for offset in (0, 1)]
    newer = [unreadable.UnreadableBatch("t", 0, offset, offset, "lz4", "codec_unavailable", "") for offset in (2, 3)]
    unreadable._pending.extend(newer)
    unreadable.requeue(older)
    assert [skipped.first_offset for skipped in unreadable.drain()] == [1, 2, 3]
