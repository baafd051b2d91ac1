"""Kafka over TLS, for real: Debian's stunnel4 terminates TLS in front of the embedded broker (whose
own TLS did not complete a handshake with aiokafka when tried), with certificates made by
`trustme`; the broker advertises the terminator's address. Homeward's clients, configured only by
the HOMEWARD_KAFKA_* settings, publish and read through it; a plaintext client is refused there."""

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from services.devstack.embedded import EmbeddedKafka, create_topics, free_port
from services.runtime.kafka_security import client_options
from services.runtime.settings import KafkaSecurity

pytestmark = pytest.mark.integration

TERMINATOR_START_SECONDS_MAX = 10.0
READ_SECONDS_MAX = 20.0
PLAINTEXT_REFUSAL_SECONDS_MAX = 15.0
TOPIC = "tls.check.v1"


@dataclass(frozen=True)
class TlsBroker:
    bootstrap: str
    ca_file: Path


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + TERMINATOR_START_SECONDS_MAX
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"stunnel did not listen on {port}")


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None:
        pytest.fail("stunnel4 is not installed: `.ci/run` installs it (apt-get install stunnel4)")
    tmp = tmp_path_factory.mktemp("kafka-tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    tls_port, broker_port = free_port(), free_port()
    (tmp / "stunnel.conf").write_text(
        "foreground = yes\n"
        "[kafka]\n"
        f"accept = 127.0.0.1:{tls_port}\n"
        f"connect = 127.0.0.1:{broker_port}\n"
        f"cert = {tmp / 'server.pem'}\n"
    )
    broker = EmbeddedKafka(broker_port, tmp / "kafka.log", advertised=f"127.0.0.1:{tls_port}")
    broker.start()
    terminator = subprocess.Popen(
        [stunnel, str(tmp / "stunnel.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_port(tls_port)
        yield TlsBroker(f"127.0.0.1:{tls_port}", tmp / "ca.pem")
    finally:
        terminator.terminate()
        terminator.wait(timeout=10)
        broker.stop()


async def test_homeward_clients_publish_and_read_over_tls(tls_broker: TlsBroker):
    settings = KafkaSecurity(kafka_security_protocol="SSL", kafka_ssl_ca_file=tls_broker.ca_file)
    options = client_options(settings)
    # The same path `up` takes to create its topics, over TLS.
    await create_topics(tls_broker.bootstrap, [TOPIC], partitions=1, client_options=options)
    producer = AIOKafkaProducer(bootstrap_servers=tls_broker.bootstrap, enable_idempotence=False, **options)
    await producer.start()
    try:
        await producer.send_and_wait(TOPIC, b"over tls", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        TOPIC, bootstrap_servers=tls_broker.bootstrap, group_id=None, auto_offset_reset="earliest", **options
    )
    await consumer.start()
    try:
        async with asyncio.timeout(READ_SECONDS_MAX):
            record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.value == b"over tls"


async def test_a_client_that_does_not_trust_the_ca_is_refused(tls_broker: TlsBroker):
    # The system's CAs do not know trustme's, so the handshake fails: no silent fallback.
    producer = AIOKafkaProducer(
        bootstrap_servers=tls_broker.bootstrap, enable_idempotence=False, request_timeout_ms=3000,
        **client_options(KafkaSecurity(kafka_security_protocol="SSL")),
    )  # fmt: skip
    with pytest.raises(KafkaConnectionError):
        async with asyncio.timeout(PLAINTEXT_REFUSAL_SECONDS_MAX):
            await producer.start()
    await producer.stop()


async def test_a_plaintext_client_is_refused_at_the_terminator(tls_broker: TlsBroker):
    producer = AIOKafkaProducer(
        bootstrap_servers=tls_broker.bootstrap, enable_idempotence=False, request_timeout_ms=3000
    )
    with pytest.raises((KafkaConnectionError, TimeoutError)):
        async with asyncio.timeout(PLAINTEXT_REFUSAL_SECONDS_MAX):
            await producer.start()
    await producer.stop()
