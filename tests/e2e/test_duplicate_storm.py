"""Every message of a case, inbound and internal, delivered three times and out of order across
topics, through `homeward up`: the end state is the one a clean run leaves. One case per
application, one booking, one verification, one payment and one payout per case, and a sound
ledger.

A storm runs beside the system: it reads every v1 topic from the beginning without a consumer
group, and each record of these cases it has not seen before (by topic and envelope id) it sends
twice more, bytes, key, headers and partition unchanged: one copy within 200 ms, shuffled with
whatever else it gathered meanwhile, and one held back until every case is paid and then sent,
shuffled again, so that copies of early events (a case opening, a booking) arrive after later ones
(the payment). The test itself sends every inbound message three times, shuffled."""

import asyncio
import json
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from contracts.registry import PAYLOAD_TYPES, dlq_topic
from tests.support import KafkaPump, envelope, eventually, evidence_headers, homeward_cli, submission

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SUBMITTED = "registration.submitted.v1"
ACCEPTED = "registration.accepted.v1"
REJECTED = "registration.rejected.v1"
BOOKED = "travel.booked.v1"
BOOKING_FAILED = "travel.booking_failed.v1"
EVIDENCE = "arrival.evidence.v1"
VERIFIED = "arrival.verified.v1"
ARRIVAL_REJECTED = "arrival.rejected.v1"
HELD = "stipend.held.v1"
DISBURSED = "stipend.disbursed.v1"
STIPEND_FAILED = "stipend.failed.v1"
NEVER = (REJECTED, BOOKING_FAILED, ARRIVAL_REJECTED, HELD, STIPEND_FAILED)

CASES = 20
SEED = 20_250_501
"""Seeds the shuffles; which records meet in a buffer still depends on timing."""
INBOUND_COPIES = 3
STORM_COPIES = 2
STORM_BUFFER_SECONDS = 0.2
STAGE_SECONDS_MAX = 60.0
QUIET_SECONDS = 3.0
QUIET_SECONDS_MAX = 30.0
AMOUNT = "1000.00"


class Storm(KafkaPump):
    """Reads every v1 topic (and the dead-letter topics, only to watch them), keeps each record of
    the watched correlation ids, and re-delivers the v1 ones as described above."""

    poll_timeout_ms = 50

    def __init__(self, bootstrap: str, correlationids: set[str], random: Random) -> None:
        super().__init__(bootstrap, [*PAYLOAD_TYPES, *(dlq_topic(topic) for topic in PAYLOAD_TYPES)])
        self.correlationids = correlationids
        self.random = random
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.dead: list[tuple[str, bytes]] = []
        self.last_seen = time.monotonic()
        self.copies_sent = 0
        self._stormed: set[tuple[str, str]] = set()
        self._buffer: list[ConsumerRecord[bytes, bytes]] = []
        self._late: list[ConsumerRecord[bytes, bytes]] = []
        self._release_late = False
        self._buffered_at = time.monotonic()

    def on_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self._see(record)

    async def after_poll(self) -> None:
        now = time.monotonic()
        if now - self._buffered_at >= STORM_BUFFER_SECONDS:
            await self._send_shuffled(self._buffer)
            self._late.extend(self._buffer)
            self._buffer = []
            self._buffered_at = now
        if self._release_late:
            await self._send_shuffled(self._late)
            self._late = []

    def _see(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            document = json.loads(record.value)
        except (TypeError, ValueError):
            return
        if not isinstance(document, dict) or document.get("correlationid") not in self.correlationids:
            return
        self.last_seen = time.monotonic()
        if record.topic.endswith(".dlq"):
            self.dead.append((record.topic, record.value))
            return
        self.received.append((record.topic, document))
        if (record.topic, document["id"]) not in self._stormed:
            self._stormed.add((record.topic, document["id"]))
            self._buffer.append(record)

    async def _send_shuffled(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        shuffled = list(records)
        self.random.shuffle(shuffled)
        sent = [
            await self.producer.send(
                record.topic, record.value, key=record.key, partition=record.partition,
                headers=list(record.headers) or None,
            )
            for record in shuffled
        ]  # fmt: skip
        await asyncio.gather(*sent)
        self.copies_sent += len(sent)

    async def drain(self) -> None:
        """Sends the copies held back, and from now on every late copy as soon as it is due."""
        self._release_late = True
        await eventually(lambda: not self._buffer and not self._late, timeout=STAGE_SECONDS_MAX, what="storm drained")

    def events(self, topic: str) -> dict[str, dict[str, Any]]:
        """Distinct events (by envelope id) of `topic` for the watched cases."""
        return {document["id"]: document for seen, document in self.received if seen == topic}

    def by_case(self, topic: str, field: str = "case_id") -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for document in self.events(topic).values():
            grouped[str(document["data"][field])].append(document)
        return grouped


async def send_shuffled(
    producer: AIOKafkaProducer, messages: list[tuple[str, dict[str, Any], str]], random: Random
) -> None:
    """Each message `INBOUND_COPIES` times (same envelope, same bytes), all in one shuffled order."""
    copies = [(topic, json.dumps(value).encode(), key) for topic, value, key in messages] * INBOUND_COPIES
    random.shuffle(copies)
    sent = [
        await producer.send(topic, value, key=key.encode(), headers=evidence_headers(topic, value))
        for topic, value, key in copies
    ]
    await asyncio.gather(*sent)


def evidence_for(case: dict[str, Any], index: int, flight_number: str) -> list[dict[str, Any]]:
    """Alternately a partner office's record, or a carrier's landing plus an app check-in."""
    observed = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()

    def record(source: str, **fields: Any) -> dict[str, Any]:
        data = {"evidence_id": str(uuid4()), "case_id": case["case_id"], "source": source,
                "observed_at": observed, "country": "HN", **fields}  # fmt: skip
        return envelope(EVIDENCE, data, correlationid=case["correlationid"], source=source.replace("_", "-"))

    if index % 2 == 0:
        return [record("partner_office", office_code="TGU-01", officer_id="o-3", document_checked=True)]
    return [
        record("carrier", flight_number=flight_number, status="landed"),
        record("participant_app", identity_match_score=0.91, latitude=14.07, longitude=-87.19),
    ]


def runtime(state_dir: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((state_dir / "runtime.json").read_text())
    return found


async def ledger_rows(database_url: str, identity_keys: list[str]) -> tuple[list[Any], dict[str, int]]:
    connection = await asyncpg.connect(database_url)
    try:
        payments = await connection.fetch(
            "SELECT payment_id::text, case_id::text, identity_key, status, amount::text"
            " FROM disbursement.payments WHERE identity_key = ANY($1::text[])",
            identity_keys,
        )
        kinds = await connection.fetch(
            "SELECT kind, count(*) AS transfers FROM disbursement.transfers"
            " WHERE payment_id = ANY($1::uuid[]) GROUP BY kind",
            [row["payment_id"] for row in payments],
        )
    finally:
        await connection.close()
    return list(payments), {row["kind"]: row["transfers"] for row in kinds}


async def test_tripled_shuffled_delivery_ends_like_a_clean_run(homeward):
    started = time.monotonic()
    random = Random(SEED)
    applications = [envelope(SUBMITTED, submission(), source="participant-app") for _ in range(CASES)]
    correlationids = {message["correlationid"] for message in applications}
    application_ids = {message["data"]["application_id"] for message in applications}
    async with Storm(homeward.kafka, correlationids, random) as storm:
        await send_shuffled(
            storm.producer,
            [(SUBMITTED, message, message["data"]["application_id"]) for message in applications],
            random,
        )
        await eventually(lambda: set(storm.by_case(ACCEPTED, "application_id")) >= application_ids,
                         timeout=STAGE_SECONDS_MAX, what="every application accepted")  # fmt: skip
        cases = {}
        for message in applications:
            [opened, *_] = storm.by_case(ACCEPTED, "application_id")[message["data"]["application_id"]]
            cases[opened["data"]["case_id"]] = {
                "case_id": opened["data"]["case_id"], "correlationid": message["correlationid"],
                "identity_key": opened["data"]["identity_key"],
            }  # fmt: skip
        await eventually(lambda: set(storm.by_case(BOOKED)) >= set(cases), timeout=STAGE_SECONDS_MAX,
                         what="every case booked")  # fmt: skip
        evidence: list[tuple[str, dict[str, Any], str]] = []
        expected_rules = {}
        for index, case_id in enumerate(sorted(cases)):
            flight = storm.by_case(BOOKED)[case_id][0]["data"]["flight_number"]
            evidence.extend((EVIDENCE, record, case_id) for record in evidence_for(cases[case_id], index, flight))
            expected_rules[case_id] = "partner_office" if index % 2 == 0 else "carrier_and_app"
        await send_shuffled(storm.producer, evidence, random)
        await eventually(lambda: set(storm.by_case(DISBURSED)) >= set(cases), timeout=STAGE_SECONDS_MAX,
                         what="every case paid")  # fmt: skip
        await storm.drain()
        await eventually(lambda: time.monotonic() - storm.last_seen >= QUIET_SECONDS, timeout=QUIET_SECONDS_MAX,
                         what=f"{QUIET_SECONDS:.0f} s without an event of these cases")  # fmt: skip
        copies = storm.copies_sent
        deliveries = Counter((topic, document["id"]) for topic, document in storm.received)
        assert min(deliveries.values()) >= 1 + STORM_COPIES, "the storm did not deliver every event three times"

        # One case per application, and nothing else said about any application.
        accepted = storm.by_case(ACCEPTED, "application_id")
        assert {application: len(events) for application, events in accepted.items()} == dict.fromkeys(
            application_ids, 1
        ), "an application was accepted more than once"
        for topic in NEVER:
            assert not storm.events(topic), f"{topic} for these cases: {list(storm.events(topic).values())[:2]}"
        assert not storm.dead, f"dead letters for these cases: {storm.dead[:2]}"
        # One booking, one verification by the expected rule, one payment per case.
        for topic in (BOOKED, VERIFIED, DISBURSED):
            assert {case: len(events) for case, events in storm.by_case(topic).items()} == dict.fromkeys(cases, 1), (
                f"{topic}: not exactly one event per case"
            )
        assert {case: events[0]["data"]["rule"] for case, events in storm.by_case(VERIFIED).items()} == expected_rules
        paid = {case: events[0]["data"] for case, events in storm.by_case(DISBURSED).items()}
        assert {data["amount"] for data in paid.values()} == {AMOUNT}
        payment_ids = {data["payment_id"] for data in paid.values()}
        assert len(payment_ids) == CASES

    # The ledger: one payment per identity, each reserved once and posted once.
    found = runtime(homeward.state_dir)
    payments, transfers = await ledger_rows(found["database_url"], [case["identity_key"] for case in cases.values()])
    assert sorted((row["case_id"], row["status"]) for row in payments) == sorted(
        (case_id, "disbursed") for case_id in cases
    )
    assert {row["payment_id"] for row in payments} == payment_ids
    assert transfers == {"pending": CASES, "post_pending": CASES}, transfers
    # The provider moved the money once per payment.
    # The sandbox answers only calls bearing the token `up` made for it (secrets.json).
    token = json.loads((homeward.state_dir / "secrets.json").read_text())["HOMEWARD_SANDBOX_PAYOUT_TOKEN"]
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=found["payouts"], timeout=30, headers=headers) as client:
        payouts = (await client.get("/payouts")).raise_for_status().json()["payouts"]
    ours = [payout for payout in payouts if payout["key"] in payment_ids]
    assert sorted(payout["key"] for payout in ours) == sorted(payment_ids)
    assert {(payout["status"], payout["amount"]) for payout in ours} == {("paid", AMOUNT)}
    verify = await asyncio.to_thread(homeward_cli, "ledger", "verify", "--json", "--state-dir", str(homeward.state_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout) == {"clean": True, "breaches": []}
    print(f"\n{CASES} cases, {CASES * INBOUND_COPIES} submissions, {len(evidence) * INBOUND_COPIES} evidence records "
          f"and {copies} storm copies in {time.monotonic() - started:.1f} s")  # fmt: skip
