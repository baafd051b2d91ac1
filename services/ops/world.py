"""The world around Homeward, for `homeward demo` and `homeward chaos`: a cohort of realistic
participants through the public contract, end to end, and the `homeward up` it runs against.

It plays the systems around Homeward: the participant app publishes registrations, and when a
ticket is issued the carrier reports the landing and the app checks in (or a partner office
sees the person). It then reports what Homeward decided and paid.
"""

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import stamina
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError, ProducerClosed
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contracts.client import Publisher, Signer
from contracts.events import (
    EVIDENCE_TOPIC,
    ArrivalAttested,
    ArrivalRejected,
    ArrivalVerified,
    CaseWithdrawn,
    RegistrationAccepted,
    RegistrationRejected,
    RegistrationSubmitted,
    StipendDisbursed,
    StipendFailed,
    StipendHeld,
    TravelBooked,
    TravelBookingFailed,
    WithdrawalRefused,
    WithdrawalRequested,
)
from contracts.signing import SIGNER_SOURCES, public_key_pem
from services.devstack.running import READY_PREFIX, Runtime
from services.ops.common import READ_ONLY, audit_as, payout_provider, record_action, review_queries
from services.runtime.messages import build_envelope, encode
from services.runtime.produce import Record, send_batched

UP_START_TIMEOUT_SECONDS = 180.0
UP_STOP_SECONDS_MAX = 60.0
PIPE_CHUNK_BYTES = 64 * 1024
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM
SEND_ATTEMPTS_MAX = 10
PUBLISH_CHUNK_RECORDS = 500
"""Records the world hands the producer at once (batched per partition)."""
PUBLISH_CHUNKS_IN_FLIGHT_MAX = 4
"""Chunks sent and not yet acknowledged: without a bound, tens of thousands of sends at once
timed out in the producer's queue and were lost."""
RATE_TICKS_PER_SECOND = 100
"""How often an open-loop run (`rate`) hands the producer the registrations now due."""
PRODUCER_BATCH_BYTES = 1024 * 1024
EARLY_EVENTS_MAX = 1_000_000
SEND_BACKOFF_SECONDS = 0.2
SEND_BACKOFF_MAX_SECONDS = 3.0
POLL_TIMEOUT_MS = 200
# The apps read as latency-sensitive apps do. Apache Kafka answers a fetch as soon as a record is
# there whatever this says; the embedded broker holds each fetch this long (with Kafka's default
# 500 ms, about 115 ms per record).
FETCH_MAX_WAIT_MS = 50
# The world's consumer group joins before the first registration is sent: a real app's consumer
# has been running for a while, and the join (half its session on the embedded broker) is not the
# system's latency. 6 s is the shortest session Apache Kafka accepts by default.
CONSUMER_SESSION_TIMEOUT_MS = 6_000
CONSUMER_HEARTBEAT_INTERVAL_MS = 2_000
JOIN_TIMEOUT_SECONDS = 60.0
PARTNER_OFFICE_SHARE = 0.2
POOR_CHECK_IN_SHARE = 0.05
"""Of the travellers who check in with the app, those whose first try scores too low to count
(a blurred photo, poor light) and who try again, as real check-ins go."""
POOR_CHECK_IN_SCORE = (0.40, 0.79)
PROGRESS_REFRESH_PER_SECOND = 4
INELIGIBLE_CODES = ("ineligible_age", "ineligible_destination", "document_expired", "consent_missing")
SOURCE_APP = "participant-app"

DESTINATIONS = [
    ("HN", "Tegucigalpa", "TGU"), ("GT", "Guatemala City", "GUA"), ("SV", "San Salvador", "SAL"),
    ("MX", "Mexico City", "MEX"), ("CO", "Bogotá", "BOG"), ("DO", "Santo Domingo", "SDQ"),
    ("EC", "Quito", "UIO"), ("PE", "Lima", "LIM"), ("VE", "Caracas", "CCS"), ("NI", "Managua", "MGA"),
]  # fmt: skip
ORIGINS = [("TX", "Houston", "IAH"), ("CA", "Los Angeles", "LAX"), ("FL", "Miami", "MIA"),
           ("IL", "Chicago", "ORD"), ("NY", "New York", "JFK"), ("GA", "Atlanta", "ATL")]  # fmt: skip
GIVEN = ["Ana", "Luis", "María", "José", "Carmen", "Jorge", "Lucía", "Carlos", "Rosa", "Miguel", "Elena", "Pedro"]
FAMILY = ["Reyes", "Mendoza", "García", "López", "Hernández", "Martínez", "Pérez", "Rodríguez", "Flores", "Cruz"]
OUTBOUND_TOPICS = [
    RegistrationAccepted.TOPIC, RegistrationRejected.TOPIC, TravelBooked.TOPIC, TravelBookingFailed.TOPIC,
    ArrivalVerified.TOPIC, ArrivalRejected.TOPIC, StipendHeld.TOPIC, StipendDisbursed.TOPIC, StipendFailed.TOPIC,
]  # fmt: skip
PROGRAM_RULE_TOPICS = [CaseWithdrawn.TOPIC, WithdrawalRefused.TOPIC, ArrivalAttested.TOPIC]
"""What a world that plays the program rules (contract v1.1) reads besides: the answers to its
withdrawals, and the attestations it counts. A world without them (the benchmark's) does not."""
WITHDRAW_BEFORE = "withdraw_before"
"""A participant who changes their mind once their flight is booked, before it leaves."""
WITHDRAW_AFTER = "withdraw_after"
"""A participant who asks to withdraw after arriving: too late (refused)."""
SHARES_WALLET = "shares_wallet"
"""A participant whose payout wallet is another participant's (a family's): held for review."""
REVIEWERS = ("homeward world reviewer 1", "homeward world reviewer 2")
"""The two operators the world's review of held payments names in the audit trail."""
REVIEW_RELEASE_BATCH_MAX = 200


@dataclass
class Participant:
    application_id: UUID
    correlationid: UUID
    payload: dict[str, Any]
    expected: str  # "accepted" or a rejection code
    destination_country: str
    envelope: bytes = b""
    plan: str | None = None
    """What the participant does besides going home (contract v1.1): WITHDRAW_BEFORE, WITHDRAW_AFTER
    or SHARES_WALLET; None for most."""
    """The registration the app sends first, built before the run so that sending costs nothing more."""


@dataclass
class Tally:
    """What the demo saw come back, deduplicated by the ids that matter."""

    decided: dict[UUID, str] = field(default_factory=dict)
    rejection_codes: Counter[str] = field(default_factory=Counter)
    cases: dict[UUID, UUID] = field(default_factory=dict)  # case -> application
    booked: set[UUID] = field(default_factory=set)
    booking_failed: set[UUID] = field(default_factory=set)
    verified: set[UUID] = field(default_factory=set)
    arrival_rejected: set[UUID] = field(default_factory=set)
    held: set[UUID] = field(default_factory=set)
    failed: set[UUID] = field(default_factory=set)
    payments: dict[UUID, set[UUID]] = field(default_factory=dict)  # case -> payment ids
    paid: dict[UUID, Decimal] = field(default_factory=dict)  # payment id -> amount
    settled: set[UUID] = field(default_factory=set)
    """Cases with a final outcome (paid, held, failed, booking failed, arrival rejected, withdrawn);
    kept as the events come, so that asking whether the run is over costs nothing."""
    withdrawn: set[UUID] = field(default_factory=set)
    withdrawal_refused: Counter[str] = field(default_factory=Counter)
    attested: set[UUID] = field(default_factory=set)
    held_for_review: set[UUID] = field(default_factory=set)
    held_paused: set[UUID] = field(default_factory=set)
    reviewed: set[UUID] = field(default_factory=set)
    """Cases whose held payment the world's two reviewers released."""
    awaiting: set[UUID] = field(default_factory=set)
    """Cases whose withdrawal request has no answer yet."""

    def finished(self, participants: int) -> bool:
        return len(self.decided) >= participants and len(self.settled) >= len(self.cases) and not self.awaiting


class _Joined(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no types
    """Tells when the world's consumer first has its partitions."""

    def __init__(self) -> None:
        self.assigned = asyncio.Event()

    async def on_partitions_revoked(self, revoked: object) -> None:
        """Nothing to hand over: the world commits no offsets."""

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.assigned.set()


def _retryable(error: Exception) -> bool:
    """Broker errors are worth retrying; a producer that was stopped is not."""
    return isinstance(error, KafkaError) and not isinstance(error, ProducerClosed)


def make_cohort(size: int, rng: random.Random, *, program_rules: bool = False) -> list[Participant]:
    """Mostly eligible people; about 1% each ineligible for one of four reasons, and 1% duplicates
    (a second application with someone else's identity document). With `program_rules` (contract
    v1.1), about 1% more each change their mind before their flight, ask to withdraw once home, or
    are paid to another participant's wallet."""
    # Document numbers are unique to the run too, so that a second cohort sent to the same `up`
    # is not refused as duplicates of the first.
    run_tag = f"{rng.randrange(16**6):06X}"
    cohort = [_participant(index, run_tag, rng) for index in range(size)]
    order = rng.sample(range(size), k=size)
    per_kind = max(1, size // 100) if size >= 20 else 0
    kinds = [*INELIGIBLE_CODES, "duplicate_registration"]
    chosen = {kind: order[n * per_kind : (n + 1) * per_kind] for n, kind in enumerate(kinds)}
    plain = order[len(kinds) * per_kind :]
    for code in INELIGIBLE_CODES:
        for index in chosen[code]:
            _make_ineligible(cohort[index], code)
    for index, original in zip(chosen["duplicate_registration"], plain, strict=False):
        cohort[index].payload["identity_document"] = dict(cohort[original].payload["identity_document"])
        cohort[index].expected = "duplicate_registration"
    if program_rules and per_kind:
        # Among the plain ones past those the duplicates copied: each kind its own people.
        rest = plain[per_kind:]
        for n, plan in enumerate((WITHDRAW_BEFORE, WITHDRAW_AFTER, SHARES_WALLET)):
            for index in rest[n * per_kind : (n + 1) * per_kind]:
                cohort[index].plan = plan
        owners = rest[3 * per_kind : 4 * per_kind]
        for index, owner in zip(rest[2 * per_kind : 3 * per_kind], owners, strict=False):
            cohort[index].payload["payout"] = dict(cohort[owner].payload["payout"])
    for participant in cohort:
        participant.envelope = registration_envelope(participant)
    return cohort


REGISTRATION_APP = Publisher(source=SOURCE_APP)
"""The registration app, publishing through the contract's helper (contracts.client)."""


def registration_envelope(participant: Participant) -> bytes:
    """What the app publishes: a new envelope each time, the same application id (a safe retry).
    Not validated here: some of the cohort is meant to be refused (tests/unit/test_world.py
    checks that the rest speaks the contract)."""
    record = REGISTRATION_APP.record(
        RegistrationSubmitted.TOPIC, participant.payload, correlationid=participant.correlationid, validate=False
    )
    return record.value


def _wallet(run_tag: str, index: int) -> str:
    """A person's own mobile wallet: distinct people do not share one by chance (a wallet shared
    by several identities is held for review), so the number is unique to the run and the person
    (E.164 allows the 11 digits after +504; beyond 100,000 people a run reuses numbers)."""
    return f"+504{int(run_tag, 16) % 10**6:06d}{index % 10**5:05d}"


def _participant(index: int, run_tag: str, rng: random.Random) -> Participant:
    country, city, airport = rng.choice(DESTINATIONS)
    state, us_city, origin = rng.choice(ORIGINS)
    given, family = rng.choice(GIVEN), rng.choice(FAMILY)
    application_id = uuid4()
    submitted = datetime.now(UTC)
    birth = date(rng.randrange(1950, 2004), rng.randrange(1, 13), rng.randrange(1, 29))
    payout: dict[str, Any] = (
        {"method": "mobile_money", "msisdn": _wallet(run_tag, index), "provider": "tigo"}
        if index % 3
        else {"method": "bank_account", "bank_code": "BANKXX", "account_number": f"{int(run_tag, 16):08d}{index:07d}",
              "account_name": f"{given} {family}"}
    )  # fmt: skip
    payload = {
        "application_id": str(application_id),
        "submitted_at": submitted.isoformat(),
        "person": {"given_name": given, "family_name": family, "nationality": country,
                   "date_of_birth": birth.isoformat()},
        "identity_document": {"type": "passport", "number": f"{country}{run_tag}{index:08d}",
                              "issuing_country": country,
                              "expires_on": (submitted.date() + timedelta(days=rng.randrange(60, 3650))).isoformat()},
        "contact": {"phone": f"+1713555{rng.randrange(1000, 9999)}", "email": None},
        "current_location": {"us_state": state, "city": us_city, "nearest_airport": origin},
        "destination": {"country": country, "city": city, "airport": airport},
        "payout": payout,
        "consent": {"data_processing": True, "version": "2025-05"},
    }  # fmt: skip
    return Participant(application_id, uuid4(), payload, "accepted", country)


def _make_ineligible(participant: Participant, code: str) -> None:
    payload = participant.payload
    if code == "ineligible_age":
        payload["person"]["date_of_birth"] = (datetime.now(UTC).date() - timedelta(days=365 * 16)).isoformat()
    elif code == "ineligible_destination":
        payload["destination"] = {"country": "US", "city": "Miami", "airport": "MIA"}
    elif code == "document_expired":
        payload["identity_document"]["expires_on"] = "2020-01-01"
    else:
        payload["consent"]["data_processing"] = False
    participant.expected = code


def _envelope(topic_payload: Any, correlationid: UUID, source: str) -> bytes:
    return encode(build_envelope(topic_payload, source=source, correlationid=correlationid, causationid=None))


async def _stop(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stops a client. With the broker gone, aiokafka's consumer re-raises the cancellation of its
    own fetch task from `stop()`; that is not this task being cancelled, so it is not passed on."""
    try:
        await client.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


@dataclass(frozen=True, slots=True)
class Booking:
    """What the world reads of a `travel.booked` event: enough to land the flight."""

    case_id: UUID
    flight_number: str
    scheduled_arrival: datetime


WORLD_OPERATOR = "homeward world"
"""Who the audit trail names for the signers a world (the demo, chaos, a benchmark) registers."""


@dataclass(frozen=True)
class EvidenceSigners:
    """The world's evidence signers (contract v1.1): a key of its own per source, made for the run
    and registered as an operator registers one (`homeward signers add` runs the same function)."""

    keys: dict[str, tuple[str, Ed25519PrivateKey]]
    """Evidence source → (signer id, private key)."""

    @classmethod
    def generate(cls, run_tag: str) -> "EvidenceSigners":
        return cls({source: (f"world-{source}-{run_tag}", Ed25519PrivateKey.generate()) for source in SIGNER_SOURCES})

    async def register(self, database_url: str) -> None:
        """Adds each signer, with its line in the audit trail, as `homeward signers add` does."""
        from services.arrival.adapters import signers
        from services.runtime.db import connect

        connection = await connect(database_url, schema="arrival")
        try:
            for source, (signer_id, key) in self.keys.items():
                async with connection.transaction():
                    entry, added = await signers.add(connection, signer_id, source, public_key_pem(key))
                    arguments = {"id": signer_id, "source": source, "fingerprint": entry.fingerprint}
                    await record_action(connection, WORLD_OPERATOR, "signers add", arguments, {"added": added})
        finally:
            await connection.close()

    def publisher(self, source: str, app: str) -> Publisher:
        """The publisher of one source's evidence (its app's name as the envelope's source), signing
        with that source's key, as contracts.client does for any upstream app."""
        signer_id, private_key = self.keys[source]
        return Publisher(source=app, signer=Signer(signer_id, private_key))


def evidence_for(
    booking: Booking, country: str, correlationid: UUID, rng: random.Random, signers: EvidenceSigners
) -> list[Record]:
    """What the world reports after a flight, signed: a landing and an app check-in, or a
    partner-office visit. (tests/unit/test_world.py checks that it speaks the contract; the run
    does not pay for validating every message.)"""
    observed = max(datetime.now(UTC), booking.scheduled_arrival)
    common = {"case_id": str(booking.case_id), "observed_at": observed.isoformat(), "country": country}
    if rng.random() < PARTNER_OFFICE_SHARE:
        reports = [
            (
                "partner-office",
                {
                    "source": "partner_office",
                    "office_code": f"{country}-RECEPTION-01",
                    "officer_id": f"officer-{rng.randrange(1000, 9999)}",
                    "document_checked": True,
                },
            )
        ]
    else:
        check_in = {"source": "participant_app", "latitude": 14.07, "longitude": -87.19}
        reports = [
            ("carrier", {"source": "carrier", "flight_number": booking.flight_number, "status": "landed"}),
            ("participant-app", check_in | {"identity_match_score": round(rng.uniform(0.82, 0.99), 2)}),
        ]
        if rng.random() < POOR_CHECK_IN_SHARE:
            poor = round(rng.uniform(*POOR_CHECK_IN_SCORE), 2)
            reports.insert(1, ("participant-app", check_in | {"identity_match_score": poor}))
    messages = []
    for reporter, fields in reports:
        evidence_id = uuid4()
        record = signers.publisher(str(fields["source"]), reporter).record(
            EVIDENCE_TOPIC, {"evidence_id": str(evidence_id), **common, **fields}, correlationid=correlationid,
            envelope_id=evidence_id, time=observed, validate=False,
        )  # fmt: skip
        messages.append(Record(record.topic, record.key, record.value, tuple(record.headers)))
    return messages


class Demo:
    def __init__(
        self,
        runtime: Runtime,
        participants: int,
        console: Console,
        rng: random.Random,
        *,
        metadata_max_age_ms: int,
        compression_type: str | None = None,
        rate: float | None = None,
        kafka_options: dict[str, Any] | None = None,
        program_rules: bool = False,
    ) -> None:
        # The world's apps refresh their view of the topics (metadata_max_age_ms) like Homeward's services do.
        self.runtime = runtime
        self.cohort = make_cohort(participants, rng, program_rules=program_rules)
        self.topics = OUTBOUND_TOPICS + (PROGRAM_RULE_TOPICS if program_rules else [])
        self.by_application = {p.application_id: p for p in self.cohort}
        self.console = console
        self.rng = rng
        self.rate = rate
        """Registrations per second (an open loop, as a population of apps sends); None sends the
        whole cohort as fast as the broker takes it."""
        self.tally = Tally()
        self.evidence: dict[UUID, list[Record]] = {}
        self.signers = EvidenceSigners.generate(f"{rng.randrange(16**6):06X}")
        self.background: set[asyncio.Task[None]] = set()
        self.in_flight = asyncio.Semaphore(PUBLISH_CHUNKS_IN_FLIGHT_MAX)
        self.unanswered = 0
        """Bookings whose evidence could not be sent within the bounded tries (each is printed)."""
        self.early: dict[UUID, list[tuple[str, dict[str, Any]]]] = {}
        self.bookings: list[Booking] = []
        """Booked, not yet answered: the follower answers them together after each poll."""
        self.flights: dict[UUID, Booking] = {}
        """The booked flights of those who plan to withdraw: landed all the same if refused."""
        self.withdrawals: list[UUID] = []
        """Cases whose participant asks to withdraw, sent together after each poll."""
        self.to_review: list[UUID] = []
        """Payments held for review, released by the world's two reviewers after each poll."""
        self.requests: dict[UUID, Record] = {}
        """Each withdrawal request sent, by case: resent as it was (same request id) when unanswered."""
        self.producer = AIOKafkaProducer(
            bootstrap_servers=runtime.kafka,
            enable_idempotence=False,
            acks="all",
            linger_ms=5,
            max_batch_size=PRODUCER_BATCH_BYTES,
            metadata_max_age_ms=metadata_max_age_ms,
            compression_type=compression_type,
            **(kafka_options or {}),  # TLS and SASL, as Homeward's own clients (kafka_security.py)
        )
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=runtime.kafka,
            group_id=f"homeward-demo-{uuid4()}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=metadata_max_age_ms,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            session_timeout_ms=CONSUMER_SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=CONSUMER_HEARTBEAT_INTERVAL_MS,
            **(kafka_options or {}),
        )

    async def run(self, timeout_seconds: float) -> float:
        await self.signers.register(self.runtime.database_url_of("arrival"))
        await self.producer.start()
        joined = _Joined()
        self.consumer.subscribe(self.topics, listener=joined)
        await self.consumer.start()
        # Bounded; the consumer reads from the earliest offset, so a slow join delays what the
        # world sees, and loses nothing.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(joined.assigned.wait(), JOIN_TIMEOUT_SECONDS)
        started = time.monotonic()
        try:
            with self._progress() as progress:
                await asyncio.gather(self._publish(progress), self._follow(progress, started + timeout_seconds))
        except asyncio.CancelledError:
            # Ctrl-C or SIGTERM: the answers still being sent are dropped, not awaited (with a large
            # cohort they could keep the command alive for minutes).
            for task in self.background:
                task.cancel()
            raise
        finally:
            await asyncio.gather(*self.background, return_exceptions=True)
            for client in (self.consumer, self.producer):
                await _stop(client)
        return time.monotonic() - started

    def _progress(self) -> Progress:
        progress = Progress(
            TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, refresh_per_second=PROGRESS_REFRESH_PER_SECOND,
        )  # fmt: skip
        total = len(self.cohort)
        eligible = sum(1 for p in self.cohort if p.expected == "accepted")
        self.tasks = {
            "submitted": progress.add_task("registrations sent", total=total),
            "decided": progress.add_task("decided", total=total),
            "booked": progress.add_task("flights booked", total=eligible),
            "verified": progress.add_task("arrivals verified", total=eligible),
            "paid": progress.add_task("stipends paid", total=eligible),
        }
        return progress

    async def _publish(self, progress: Progress) -> None:
        """Sends every registration once: all at once, or `rate` a second, chunk by chunk."""
        chunk = PUBLISH_CHUNK_RECORDS

        async def send(participants: list[Participant]) -> None:
            self.submitting(participants)
            records = [
                Record(RegistrationSubmitted.TOPIC, str(p.application_id).encode(), p.envelope) for p in participants
            ]
            await self.publish(records)
            progress.advance(self.tasks["submitted"], len(participants))

        if self.rate is not None:
            await self._publish_at_rate(self.rate, send)
            return
        sends = [
            asyncio.create_task(send(self.cohort[first : first + chunk])) for first in range(0, len(self.cohort), chunk)
        ]
        await asyncio.gather(*sends)

    async def _publish_at_rate(
        self, rate: float, send: Callable[[list[Participant]], Coroutine[Any, Any, None]]
    ) -> None:
        """Every tick, hands the producer the registrations due by then (an open loop). While
        PUBLISH_CHUNKS_IN_FLIGHT_MAX sends are unacknowledged, what falls due waits and goes in the
        next send: a slow broker makes the sends larger, not the queue of sends longer (aiokafka
        takes one batch per partition at a time, and a queue of small sends timed out in it)."""
        started, handed, total = time.monotonic(), 0, len(self.cohort)
        sends: list[asyncio.Task[None]] = []
        unacknowledged: set[asyncio.Task[None]] = set()
        while handed < total:
            await asyncio.sleep(1 / RATE_TICKS_PER_SECOND)
            if len(unacknowledged) >= PUBLISH_CHUNKS_IN_FLIGHT_MAX:
                await asyncio.wait(unacknowledged, return_when=asyncio.FIRST_COMPLETED)
            due = min(total, math.floor((time.monotonic() - started) * rate))
            if due > handed:
                task = asyncio.create_task(send(self.cohort[handed:due]))
                sends.append(task)
                unacknowledged.add(task)
                task.add_done_callback(unacknowledged.discard)
                handed = due
        await asyncio.gather(*sends)

    def submitting(self, participants: list[Participant]) -> None:
        """Called as registrations are handed to the producer (a hook for the timed world)."""

    async def submit(self, participant: Participant) -> None:
        """What the app does when it tries again: a new envelope, the same application id."""
        key = str(participant.application_id)
        await self.send(RegistrationSubmitted.TOPIC, registration_envelope(participant), key)

    async def send(self, topic: str, value: bytes, key: str) -> None:
        await self.publish([Record(topic, key.encode(), value)])

    async def publish(self, records: list[Record]) -> None:
        """Publishes like a fleet of real apps: each record once, and only what the broker failed
        again, with a doubling pause (bounded); at most PUBLISH_CHUNKS_IN_FLIGHT_MAX calls in
        flight. Raises the last error for records that never went."""
        pending = list(records)
        async with self.in_flight:
            async for attempt in stamina.retry_context(
                on=_retryable, attempts=SEND_ATTEMPTS_MAX, wait_initial=SEND_BACKOFF_SECONDS,
                wait_max=SEND_BACKOFF_MAX_SECONDS,
            ):  # fmt: skip
                with attempt:
                    await self._send_once(pending)

    async def _send_once(self, pending: list[Record]) -> None:
        """Sends `pending` and leaves in it only the records the broker failed; raises the first failure."""
        batches = await send_batched(self.producer, pending)
        outcomes = await asyncio.gather(*(batch.future for batch in batches), return_exceptions=True)
        pending[:] = [
            record
            for batch, outcome in zip(batches, outcomes, strict=True)
            if isinstance(outcome, BaseException)
            for record in batch.records
        ]
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _follow(self, progress: Progress, deadline: float) -> None:
        while not await self.finished():
            if time.monotonic() > deadline:
                self.console.print("[red]gave up waiting: the demo's time limit passed[/red]")
                return
            if not self.up_alive():
                self.console.print(f"[red]`homeward up` (pid {self.runtime.pid}) stopped; nothing more will come[/red]")
                return
            try:
                batches = await self.consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
            except KafkaError as error:
                # The broker went away (or lost its data): keep following once it is back.
                self.console.print(f"[yellow]broker unavailable ({type(error).__name__}); waiting[/yellow]")
                await asyncio.sleep(POLL_TIMEOUT_MS / 1000)
                continue
            for records in batches.values():
                for record in records:
                    self._observe(record.topic, json.loads(record.value))
            if self.bookings:
                # Answered in the background, as carriers and apps would: the follower keeps reading.
                self._in_background(self._answer(self.bookings))
                self.bookings = []
            if self.withdrawals:
                self._in_background(self._withdraw(self.withdrawals))
                self.withdrawals = []
            if self.to_review:
                self._in_background(self._review(self.to_review))
                self.to_review = []
            self._update(progress)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def finished(self) -> bool:
        return self.tally.finished(len(self.cohort))

    def up_alive(self) -> bool:
        try:
            os.kill(self.runtime.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _observe(self, topic: str, envelope: dict[str, Any]) -> None:
        data, tally = envelope["data"], self.tally
        if topic == RegistrationAccepted.TOPIC:
            application_id = UUID(data["application_id"])
            if application_id in self.by_application:
                tally.decided[application_id] = "accepted"
                tally.cases[UUID(data["case_id"])] = application_id
                # Topics are read independently, so the booking may have come first: replay it now.
                for topic_seen, early in self.early.pop(UUID(data["case_id"]), []):
                    self._observe(topic_seen, early)
            return
        if topic == RegistrationRejected.TOPIC:
            application_id = UUID(data["application_id"])
            if application_id in self.by_application and application_id not in tally.decided:
                code = data["reasons"][0]["code"]
                tally.decided[application_id] = code
                tally.rejection_codes[code] += 1
            return
        case_id = UUID(data["case_id"])
        if case_id not in tally.cases:
            # Maybe ours, seen before its acceptance (events of different topics arrive in any order).
            if len(self.early) < EARLY_EVENTS_MAX:
                self.early.setdefault(case_id, []).append((topic, envelope))
            return
        plan = self.by_application[tally.cases[case_id]].plan
        if topic == TravelBooked.TOPIC:
            if case_id not in tally.booked:
                tally.booked.add(case_id)
                arrival = datetime.fromisoformat(data["scheduled_arrival"])
                booking = Booking(case_id, data["flight_number"], arrival)
                if plan == WITHDRAW_BEFORE:  # changes their mind before the flight leaves
                    self.flights[case_id] = booking
                    self.withdrawals.append(case_id)
                else:
                    self.bookings.append(booking)
            return
        if topic == CaseWithdrawn.TOPIC:
            tally.withdrawn.add(case_id)
            tally.settled.add(case_id)
            tally.awaiting.discard(case_id)
            return
        if topic == WithdrawalRefused.TOPIC:
            if case_id in tally.awaiting:
                tally.awaiting.discard(case_id)
                tally.withdrawal_refused[data["reason"]] += 1
                if case_id in self.flights:  # asked too late: they flew after all
                    self.bookings.append(self.flights.pop(case_id))
            return
        if topic == ArrivalAttested.TOPIC:
            tally.attested.add(case_id)
            return
        if topic == ArrivalVerified.TOPIC and plan == WITHDRAW_AFTER and case_id not in tally.verified:
            self.withdrawals.append(case_id)  # home, and asks to withdraw: too late
        if topic == StipendHeld.TOPIC and data["reason"] != "budget_exhausted":
            if data["reason"] == "instrument_shared" and case_id not in tally.held_for_review:
                tally.held_for_review.add(case_id)
                self.to_review.append(UUID(data["payment_id"]))
            elif data["reason"] == "program_paused":
                tally.held_paused.add(case_id)
            return  # not settled: paid once reviewed, or once the program resumes
        if topic == StipendDisbursed.TOPIC:
            tally.payments.setdefault(case_id, set()).add(UUID(data["payment_id"]))
            tally.paid[UUID(data["payment_id"])] = Decimal(data["amount"])
            tally.settled.add(case_id)
            return
        bucket = {
            TravelBookingFailed.TOPIC: tally.booking_failed, ArrivalVerified.TOPIC: tally.verified,
            ArrivalRejected.TOPIC: tally.arrival_rejected, StipendHeld.TOPIC: tally.held,
            StipendFailed.TOPIC: tally.failed,
        }.get(topic)  # fmt: skip
        if bucket is not None:
            bucket.add(case_id)
            if topic != ArrivalVerified.TOPIC:
                tally.settled.add(case_id)

    async def _answer(self, bookings: list[Booking]) -> None:
        records = []
        for booking in bookings:
            participant = self.by_application[self.tally.cases[booking.case_id]]
            messages = evidence_for(
                booking, participant.destination_country, participant.correlationid, self.rng, self.signers
            )
            self.evidence[booking.case_id] = messages
            records += messages
        for first in range(0, len(records), PUBLISH_CHUNK_RECORDS):
            chunk = records[first : first + PUBLISH_CHUNK_RECORDS]
            try:
                await self.publish(chunk)
            except (KafkaError, OSError) as error:
                # The world gave up on these cases after its bounded tries; the run reports them unpaid.
                cases = {record.key for record in chunk}
                self.unanswered += len(cases)
                self.console.print(f"[red]evidence for {len(cases)} case(s) not sent: {type(error).__name__}[/red]")

    async def _withdraw(self, cases: list[UUID]) -> None:
        """The participants' withdrawal requests, from the app (contract v1.1)."""
        records = []
        for case_id in cases:
            if case_id in self.requests:  # sent before: the same request again is a safe retry
                records.append(self.requests[case_id])
                self.tally.awaiting.add(case_id)
                continue
            participant = self.by_application[self.tally.cases[case_id]]
            request = {
                "request_id": str(uuid4()), "case_id": str(case_id), "requested_at": datetime.now(UTC).isoformat(),
                "channel": "participant_app", "reason": "changed_mind",
            }  # fmt: skip
            record = REGISTRATION_APP.record(
                WithdrawalRequested.TOPIC, request, correlationid=participant.correlationid, validate=False
            )
            self.requests[case_id] = Record(record.topic, record.key, record.value, tuple(record.headers))
            records.append(self.requests[case_id])
            self.tally.awaiting.add(case_id)
        try:
            await self.publish(records)
        except (KafkaError, OSError) as error:
            self.console.print(f"[red]{len(records)} withdrawal request(s) not sent: {type(error).__name__}[/red]")
            self.tally.awaiting.difference_update(cases)

    async def _review(self, payment_ids: list[UUID]) -> None:
        """The world's two reviewers: one asks to release each payment held for review, the other
        approves, as `homeward review release` and `homeward approvals approve` do."""
        import asyncpg

        from services.disbursement import review
        from services.disbursement.app import RETENTION, queries
        from services.disbursement.ledger import ChainKey
        from services.runtime.db import init_connection, runtime_queries
        from services.runtime.uow import ServiceDatabase

        key = self.runtime.secret("HOMEWARD_LEDGER_KEY")
        named, review_sql = queries(ChainKey(bytes.fromhex(key or ""))), review_queries()
        pool = await asyncpg.create_pool(
            self.runtime.database_url_of("disbursement"), min_size=1, max_size=1, init=init_connection,
            server_settings={"search_path": "disbursement"},
        )  # fmt: skip
        database = ServiceDatabase(pool, "disbursement", runtime_queries(), closing_topics=RETENTION.decides)

        try:
            for payment_id in payment_ids:
                async with database.unit() as uow:
                    try:
                        asked = (await review.request(
                            uow, named, review_sql, action=review.RELEASE, operator=REVIEWERS[0],
                            audit=audit_as(REVIEWERS[0]), payment_id=payment_id,
                        )).request_id  # fmt: skip
                    except review.ReviewRefused:  # asked before (a review cut short): approve that one
                        open_one = await review_sql.open_request_for(uow.connection, payment_id=payment_id,
                                                                     reference=None)  # fmt: skip
                        if open_one is None:
                            continue  # no longer held for review
                        asked = open_one["request_id"]
                async with database.unit() as uow:
                    await review.approve(
                        uow,
                        named,
                        review_sql,
                        request_id=asked,
                        operator=REVIEWERS[1],
                        audit=audit_as(REVIEWERS[1]),
                        release_limit=REVIEW_RELEASE_BATCH_MAX,
                    )
                self.tally.reviewed.add(payment_id)
        finally:
            await pool.close()

    def _update(self, progress: Progress) -> None:
        tally = self.tally
        progress.update(self.tasks["decided"], completed=len(tally.decided))
        progress.update(self.tasks["booked"], completed=len(tally.booked))
        progress.update(self.tasks["verified"], completed=len(tally.verified))
        progress.update(self.tasks["paid"], completed=len(tally.payments))


@dataclass(frozen=True)
class LedgerView:
    """What the disbursement ledger and the payout provider's own store say, read directly."""

    budget_left: Decimal | None
    provider_payouts: int
    identities_paid_twice: int


async def read_ledger(runtime: Runtime) -> LedgerView:
    from services.disbursement import operations
    from services.disbursement.app import queries
    from services.runtime.db import connect

    connection = await connect(runtime.database_url_of(READ_ONLY), schema="disbursement")
    try:
        accounts = {account.code: account for account in await operations.balances(connection, queries())}
        twice = await queries().payments.identities_paid_twice(connection)
    finally:
        await connection.close()
    provider = payout_provider(
        runtime.payouts, attempts_max=3, backoff_initial_seconds=0.2, state_dir=Path(runtime.state_dir)
    )
    try:
        payouts = [payout for payout in await provider.list_payouts() if payout.status == "paid"]
    finally:
        await provider.close()
    budget = accounts.get("program_budget")
    return LedgerView(budget.available if budget else None, len(payouts), twice)


def summarize(
    demo: Demo, wall_seconds: float, ledger: LedgerView, *, started_up_seconds: float | None = None
) -> tuple[Table, list[str]]:
    """The summary table (each figure says whether it is this run's or the program's to date), and
    every breach of the payment rules the demo can see. `started_up_seconds`: how long starting
    `homeward up` took, where the demo started it."""
    tally, cohort = demo.tally, demo.cohort
    accepted = sum(1 for outcome in tally.decided.values() if outcome == "accepted")
    total_paid = sum(tally.paid.values(), Decimal("0.00"))
    table = Table(title="Homeward demo", show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("of")
    run, program = "this run", "all time"
    rows: list[tuple[str, str, str]] = [
        ("participants", f"{len(cohort)}", run),
        ("accepted", f"{accepted}", run),
        *((f"rejected: {code}", f"{count}", run) for code, count in sorted(tally.rejection_codes.items())),
        ("flights booked", f"{len(tally.booked)}", run),
        ("booking failed", f"{len(tally.booking_failed)}", run),
        ("arrivals verified", f"{len(tally.verified)}", run),
        ("stipends disbursed", f"{len(tally.payments)}", run),
        ("stipends held for budget", f"{len(tally.held)}", run),
        ("withdrawn before departure", f"{len(tally.withdrawn)}", run),
        *(
            (f"withdrawal refused: {reason}", f"{count}", run)
            for reason, count in sorted(tally.withdrawal_refused.items())
        ),
        ("departures attested", f"{len(tally.attested)}", run),
        ("held for review (shared wallet)", f"{len(tally.held_for_review)}", run),
        ("released by two reviewers", f"{len(tally.reviewed)}", run),
        ("held while the program was paused", f"{len(tally.held_paused)}", run),
        ("total paid", f"{total_paid:,.2f} USD", run),
        ("budget left", f"{ledger.budget_left:,.2f} USD" if ledger.budget_left is not None else "unknown", program),
        ("payouts at the provider", f"{ledger.provider_payouts}", program),
        ("first registration to last payment", f"{wall_seconds:.1f} s", run),
        ("cases per second", f"{len(cohort) / wall_seconds:.1f}", run),
    ]
    if started_up_seconds is not None:
        rows.append(("starting `homeward up` before it", f"{started_up_seconds:.1f} s", run))
    for measure, value, scope in rows:
        table.add_row(measure, value, scope)
    breaches = []
    twice = [case for case, payments in tally.payments.items() if len(payments) > 1]
    if twice:
        breaches.append(f"{len(twice)} case(s) paid more than once")
    if ledger.identities_paid_twice:
        breaches.append(f"{ledger.identities_paid_twice} identities paid more than once in the ledger")
    unpaid = set(tally.cases) - set(tally.payments) - tally.held - tally.withdrawn
    if unpaid:
        breaches.append(f"{len(unpaid)} accepted case(s) not paid")
    if paid_withdrawn := tally.withdrawn & set(tally.payments):
        breaches.append(f"{len(paid_withdrawn)} withdrawn case(s) paid")
    if ArrivalAttested.TOPIC in demo.topics and (unattested := tally.verified - tally.attested):
        breaches.append(f"{len(unattested)} verified case(s) without an attestation")
    if tally.withdrawn & tally.attested:
        breaches.append(f"{len(tally.withdrawn & tally.attested)} withdrawn case(s) attested")
    if len(tally.decided) < len(cohort):
        breaches.append(f"{len(cohort) - len(tally.decided)} application(s) got no answer")
    expected_accepted = Counter(p.expected for p in cohort)["accepted"]
    if accepted != expected_accepted:
        breaches.append(f"accepted {accepted}, expected {expected_accepted}")
    return table, breaches


@contextlib.asynccontextmanager
async def running_up(
    state_dir: Path, console: Console, *, arguments: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> AsyncIterator[Runtime]:
    """Starts `homeward up` in the background, waits for its ready line and yields how to reach it.

    Whatever happens in the block (an error, Ctrl-C, SIGTERM, a failed start), the `up` started here
    is stopped on the way out, so no database, broker or service is left running behind the command."""
    console.print(f"[bold]starting `homeward up` in {state_dir}…[/bold]")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.ops.cli", "up", "--state-dir", str(state_dir), *arguments,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    drain: asyncio.Task[None] | None = None
    try:
        ready = await asyncio.wait_for(_ready_line(process), UP_START_TIMEOUT_SECONDS)
        runtime = Runtime.read(state_dir)
        if ready is None or runtime is None:
            raise SystemExit(f"`homeward up` did not become ready; see {state_dir / 'logs'}")
        console.print(ready)
        # `up` prints nothing more on stdout, but a full pipe must never be able to block it.
        drain = asyncio.create_task(_drain(process))
        yield runtime
    finally:
        await asyncio.shield(_stop_up(process))
        if drain is not None:
            drain.cancel()


async def _ready_line(process: asyncio.subprocess.Process) -> str | None:
    """Reads `up`'s output until its ready line; None if it ended first."""
    assert process.stdout is not None
    async for line in process.stdout:
        if line.startswith(READY_PREFIX.encode()):
            return line.decode().strip()
    return None


async def _drain(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    while await process.stdout.read(PIPE_CHUNK_BYTES):
        pass


async def _stop_up(process: asyncio.subprocess.Process) -> None:
    """Ctrl-C for `up` (it stops its services, then the broker and the database); a kill if it hangs."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(process.wait(), UP_STOP_SECONDS_MAX)
    except TimeoutError:
        process.kill()
        await process.wait()


async def stoppable(command: Coroutine[Any, Any, int]) -> int:
    """Runs a command so that SIGTERM (a CI timeout, `kill`) stops it the way Ctrl-C does: its
    cleanup runs, so an `up` it started is stopped too, and it exits with 143."""
    task = asyncio.ensure_future(command)
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await task
    except asyncio.CancelledError:
        if not terminated:
            raise
        print("stopped by SIGTERM; everything this command started has been stopped", file=sys.stderr)
        return SIGTERM_EXIT_CODE
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
