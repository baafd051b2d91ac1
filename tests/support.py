"""Test helpers shared by the integration and end-to-end tiers: envelopes, a Kafka collector,
service processes, and polling with a deadline (never a fixed sleep)."""

import asyncio
import hashlib
import itertools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self
from uuid import UUID, uuid4

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import attestation
from contracts.events import EVIDENCE_TOPIC
from contracts.registry import PAYLOAD_TYPES
from contracts.signing import SIGNER_SOURCES, signature_headers
from services.disbursement.ledger import ChainKey
from services.runtime.crypto import new_key_hex

WAIT_SECONDS_MAX = 60.0
POLL_SECONDS = 0.05
SERVICE_START_SECONDS_MAX = 90.0
EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "contract" / "examples"


# Signed evidence (contract v1.1) -----------------------------------------------------------------
# One signer per evidence source, with a key derived from a fixed seed, so that every tier and
# every process of a test run signs with the same keys; the tests register them in each database.
def _test_key(seed: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest())


TEST_LEDGER_KEY = new_key_hex()
"""The ledger key of the services the tests start (their journal's hash chain)."""
TEST_INSTRUMENT_SECRET = new_key_hex()
"""Keys the payout instruments' fingerprints of the services the tests start."""
TEST_ATTESTATION_KEYS = attestation.new_key_set_json()
"""The private key set arrival signs departure attestations with in the tests."""
TEST_CHAIN = ChainKey(bytes.fromhex(TEST_LEDGER_KEY))
TEST_SIGNERS: dict[str, tuple[str, Ed25519PrivateKey]] = {
    source: (f"test-{source}", _test_key(f"homeward-test-{source}")) for source in SIGNER_SOURCES
}


def evidence_headers(topic: str, value: bytes) -> list[tuple[str, bytes]] | None:
    """What a genuine producer sends with `value`: on the evidence topic, the signature of the
    test signer of the evidence's source (of the carrier's where the value names none); None on
    other topics."""
    if topic != EVIDENCE_TOPIC:
        return None
    try:
        source = json.loads(value)["data"]["source"]
    except (ValueError, KeyError, TypeError, RecursionError):  # the fuzz tier sends all of these
        source = None
    signer_id, key = TEST_SIGNERS[source if isinstance(source, str) and source in TEST_SIGNERS else "carrier"]
    return signature_headers(signer_id, key, value)


async def register_test_signers(database_url: str) -> None:
    """Registers the test signers in a database whose arrival schema is migrated (again: a no-op),
    the way the demo's world registers its own."""
    from services.ops.world import EvidenceSigners

    await EvidenceSigners(TEST_SIGNERS).register(database_url)


def register_test_signers_now(database_url: str) -> None:
    """`register_test_signers` from synchronous code, even where an event loop is running."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(register_test_signers(database_url))
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def eventually(check: Callable[[], Any], *, timeout: float = WAIT_SECONDS_MAX, what: str = "condition") -> Any:
    """Polls `check` until it returns something truthy; fails with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)


def envelope(
    topic: str, data: dict[str, Any], *, correlationid: UUID | None = None, source: str = "test"
) -> dict[str, Any]:
    key_field = "application_id" if topic.startswith("registration.submitted") else "case_id"
    return {
        "specversion": "1.0",
        "id": str(uuid4()),
        "type": topic,
        "source": source,
        "time": datetime.now(UTC).isoformat(),
        "subject": str(data.get(key_field, "unknown")),
        "correlationid": str(correlationid or uuid4()),
        "datacontenttype": "application/json",
        "data": data,
    }


_WALLET_NUMBERS = itertools.count(secrets.randbelow(10**9))


def own_msisdn() -> str:
    """A mobile wallet number no other case of this test session has: a wallet paid to another
    identity is held for review (contract v1.1, `instrument_shared`), so two cases that drew one
    number by chance leave one unpaid: 8 random digits drawn for 2,000 cases collide in about one
    run in fifty (1 - e^(-2000²/2·10⁸)). Counted, not drawn; ten digits after +504, where the
    bench world writes eleven and the canary and fuzz tests eight, so none of theirs is ever one
    of these."""
    return f"+504{next(_WALLET_NUMBERS):010d}"


def submission(**overrides: Any) -> dict[str, Any]:
    """A valid registration.submitted.v1 payload with unique ids, a unique document and a wallet of
    its own (a wallet paid to another identity is held for review, contract v1.1)."""
    now = datetime.now(UTC)
    data: dict[str, Any] = {
        "application_id": str(uuid4()),
        "submitted_at": now.isoformat(),
        "person": {"given_name": "Ana", "family_name": "Reyes", "date_of_birth": "1991-03-14", "nationality": "HN"},
        "identity_document": {
            "type": "passport",
            "number": f"F {uuid4().hex[:6].upper()}-{uuid4().hex[:4].upper()}",
            "issuing_country": "HN",
            "expires_on": (now + timedelta(days=900)).date().isoformat(),
        },
        "contact": {"phone": "+17135550142", "email": None},
        "current_location": {"us_state": "TX", "city": "Houston", "nearest_airport": "IAH"},
        "destination": {"country": "HN", "city": "Tegucigalpa", "airport": "TGU"},
        "payout": {"method": "mobile_money", "msisdn": own_msisdn(), "provider": "tigo"},
        "consent": {"data_processing": True, "version": "2025-05"},
    }
    for dotted, value in overrides.items():
        target = data
        *parents, leaf = dotted.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return data


FETCH_MAX_WAIT_MS = 50
"""The tests' own consumers wait little for records (the embedded broker holds a fetch this long)."""


class KafkaPump:
    """A producer, and a consumer reading `topics` from the beginning in the background, handing
    every record to `on_record`; `after_poll` runs after each poll.

    The consumer uses no consumer group: it is assigned every partition at once, where a group
    join costs a second or more on tansu."""

    poll_timeout_ms = 100

    def __init__(self, bootstrap: str, topics: list[str], *, max_request_size: int = 1_048_576) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=False, acks="all", max_request_size=max_request_size
        )
        self.consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=bootstrap, group_id=None,
            auto_offset_reset="earliest", enable_auto_commit=False,
            # The embedded broker holds a fetch for its whole wait, even once records are there.
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )  # fmt: skip
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.producer.start()
        await self.consumer.start()
        self._task = asyncio.create_task(self._pump())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()
        await self.producer.stop()

    async def _pump(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=self.poll_timeout_ms)
            for records in batches.values():
                for record in records:
                    self.on_record(record)
            await self.after_poll()

    def on_record(self, record: Any) -> None:
        raise NotImplementedError

    async def after_poll(self) -> None:
        """Nothing by default."""


class Kafka(KafkaPump):
    """Publishes raw bytes and collects everything on the given topics from the beginning."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        super().__init__(bootstrap, topics)
        self.received: list[tuple[str, dict[str, str], bytes]] = []

    def on_record(self, record: Any) -> None:
        headers = {key: value.decode() for key, value in (record.headers or ())}
        self.received.append((record.topic, headers, record.value))

    async def send(self, topic: str, value: bytes | dict[str, Any], key: str, *, signed: bool = True) -> None:
        """Publishes `value`; evidence goes signed as its source's producer signs it, unless not `signed`."""
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        headers = evidence_headers(topic, raw) if signed else None
        await self.producer.send_and_wait(topic, raw, key=key.encode(), headers=headers)

    def events(self, topic: str, **match: str) -> list[dict[str, Any]]:
        """Envelopes seen on `topic` whose data fields equal `match` (as strings)."""
        found = []
        for seen_topic, _, value in self.received:
            if seen_topic != topic:
                continue
            document = json.loads(value)
            if all(str(document["data"].get(key)) == expected for key, expected in match.items()):
                found.append(document)
        return found

    def dead_letters(self, topic: str) -> list[tuple[dict[str, str], bytes]]:
        return [(headers, value) for seen, headers, value in self.received if seen == f"{topic}.dlq"]


CLI_SECONDS_MAX = 120.0


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without the developer's own HOMEWARD_* settings, plus `settings`."""
    return {key: value for key, value in os.environ.items() if not key.startswith("HOMEWARD_")} | settings


def homeward_cli(
    *arguments: str, timeout_seconds: float = CLI_SECONDS_MAX, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`homeward …` as a user runs it, configured only by the HOMEWARD_* `settings` given."""
    return subprocess.run(
        [sys.executable, "-m", "services.ops.cli", *arguments],
        env=clean_env(**settings), capture_output=True, text=True, timeout=timeout_seconds,
    )  # fmt: skip


def outbound_and_dlq_topics() -> list[str]:
    return [*PAYLOAD_TYPES, *(f"{topic}.dlq" for topic in PAYLOAD_TYPES)]


class ServiceRunner:
    """Runs `python -m services.runtime <service>` (what `homeward run` and `homeward up` run) as a
    child process and keeps every log line it writes."""

    def __init__(self, service: str, env: dict[str, str]) -> None:
        self.service = service
        self.env = {**os.environ, **env}
        self.lines: list[str] = []
        self.consuming = threading.Event()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.runtime", self.service],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        if not self.consuming.wait(SERVICE_START_SECONDS_MAX):
            self.stop()
            raise RuntimeError(f"{self.service} did not start consuming:\n" + "\n".join(self.lines[-30:]))

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if '"event": "service.consuming"' in line:
                self.consuming.set()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Sandbox:
    """Runs `homeward sandbox <kind>` as a child process; `env` carries its faults (and, for
    payouts, where callbacks go)."""

    kind = ""

    def __init__(self, store: Path, **env: str) -> None:
        from services.devstack.embedded import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = store
        self.env = {**os.environ, **env}
        self.lines: list[str] = []
        self.listening = threading.Event()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.listening.clear()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.ops.cli", "sandbox", self.kind,
             "--port", str(self.port), "--store", str(self.store)],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        if not self.listening.wait(SERVICE_START_SECONDS_MAX):
            self.stop()
            raise RuntimeError(f"{self.kind} sandbox did not start:\n" + "\n".join(self.lines[-30:]))

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix := f"sandbox {self.kind} listening on "):
                self.url = line.removeprefix(prefix).strip()  # https:// where it was given a certificate
                self.listening.set()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


class PayoutSandbox(Sandbox):
    kind = "payouts"


class TravelSandbox(Sandbox):
    kind = "travel"
