"""The relays' partitioner is aiokafka's (and the Java client's): a key lands where `send` puts it."""

import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from services.runtime.produce import murmur2, partition_of

KEY_BYTES_MAX = 64
KEYS_PER_LENGTH = 50


def test_murmur2_is_aiokafkas_for_every_length() -> None:
    rng = random.Random(1)
    for length in range(KEY_BYTES_MAX + 1):
        for _ in range(KEYS_PER_LENGTH):
            key = rng.randbytes(length)
            assert murmur2(key) == aiokafka_murmur2(key), f"a key of {length} bytes"


def test_a_case_id_goes_to_the_partition_send_would_pick() -> None:
    rng = random.Random(7)
    default = DefaultPartitioner()
    for count in range(1, 13):
        partitions = list(range(count))
        for _ in range(KEYS_PER_LENGTH):
            key = str(rng.getrandbits(128)).encode()
            assert partition_of(key, partitions) == default(key, partitions, partitions)
