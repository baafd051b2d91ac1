"""The embedded PostgreSQL server and Kafka broker start, serve clients, and stop."""

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.devstack.embedded import (
    EmbeddedKafka,
    EmbeddedPostgres,
    create_topics,
    free_port,
)

pytestmark = pytest.mark.integration

CONSUME_TIMEOUT_SECONDS = 10.0
PASSWORD = "superuser-password-of-the-test"


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(free_port(), tmp_path / "kafka.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def _query(url: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(sql)
    finally:
        await connection.close()


async def test_postgres_serves_and_keeps_rows_across_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    port = free_port()

    postgres = EmbeddedPostgres(data_dir, port, PASSWORD)
    try:
        postgres.start()
        assert (await _query(postgres.url, "SELECT 1 AS one"))[0]["one"] == 1
        await _query(postgres.url, "CREATE TABLE kept (n int)")
        await _query(postgres.url, "INSERT INTO kept VALUES (1), (2)")
    finally:
        postgres.stop()
    assert postgres.process is not None and postgres.process.poll() is not None

    restarted = EmbeddedPostgres(data_dir, port, PASSWORD)
    try:
        restarted.start()
        rows = await _query(restarted.url, "SELECT n FROM kept ORDER BY n")
        assert [row["n"] for row in rows] == [1, 2]
    finally:
        restarted.stop()


async def test_postgres_starts_despite_stale_pid_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    postgres = EmbeddedPostgres(data_dir, free_port(), PASSWORD)
    try:
        postgres.start()
        pid_file = data_dir / "postmaster.pid"
        assert postgres.process is not None
        postgres.process.kill()  # Like a crash: the server leaves its pid file behind.
        postgres.process.wait()
        assert pid_file.exists()
        postgres.start()
        assert (await _query(postgres.url, "SELECT 1 AS one"))[0]["one"] == 1
    finally:
        postgres.stop()


async def _refused(url: str) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _query(url, "SELECT 1")


async def test_postgres_asks_every_connection_for_its_password(tmp_path: Path) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pgdata", free_port(), PASSWORD)
    try:
        postgres.start()
        await _refused(f"postgresql://postgres@127.0.0.1:{postgres.port}/homeward")
        await _refused(f"postgresql://postgres:wrong@127.0.0.1:{postgres.port}/homeward")
        assert (await _query(postgres.url, "SHOW password_encryption"))[0][0] == "scram-sha-256"
        hba = await _query(postgres.url, "SELECT DISTINCT auth_method FROM pg_hba_file_rules")
        assert [row[0] for row in hba] == ["scram-sha-256"]
    finally:
        postgres.stop()


async def test_a_data_directory_that_trusted_local_connections_asks_for_passwords_once_started(
    tmp_path: Path,
) -> None:
    """State dirs made before passwords were required: their server trusted every local client."""
    data_dir = tmp_path / "pgdata"
    old = EmbeddedPostgres(data_dir, free_port(), PASSWORD)
    old._prepare_data_dir()
    initdb = [str(old.bin_dir / "initdb"), "-D", str(data_dir), "--auth=trust", "-U", "postgres"]
    await asyncio.to_thread(subprocess.run, initdb, check=True, capture_output=True, **old._as_system_user())
    postgres = EmbeddedPostgres(data_dir, free_port(), PASSWORD)
    try:
        postgres.start()
        await _refused(f"postgresql://postgres@127.0.0.1:{postgres.port}/homeward")
        assert (await _query(postgres.url, "SELECT 1 AS one"))[0]["one"] == 1
    finally:
        postgres.stop()


async def test_kafka_round_trips_a_message(kafka: EmbeddedKafka) -> None:
    await create_topics(kafka.bootstrap, ["greetings"], partitions=3)
    await create_topics(kafka.bootstrap, ["greetings"], partitions=3)  # Existing topics are fine.

    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait("greetings", b"hello", key=b"k")
    finally:
        await producer.stop()

    # Without a group the consumer skips the group join, which Tansu delays by seconds.
    consumer = AIOKafkaConsumer("greetings", bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic("greetings")
        assert partitions == {0, 1, 2}
        message = await asyncio.wait_for(consumer.getone(), CONSUME_TIMEOUT_SECONDS)
    finally:
        await consumer.stop()
    assert message.value == b"hello"
