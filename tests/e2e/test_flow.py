"""Whole cases through `homeward up`: what an integrator publishes and what comes back."""

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest

from tests.support import Kafka, envelope, eventually, homeward_cli, outbound_and_dlq_topics, submission

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SUBMITTED = "registration.submitted.v1"
EVIDENCE = "arrival.evidence.v1"


def evidence(case_id: str, source: str, country: str, **fields: Any) -> dict[str, Any]:
    observed = fields.pop("observed_at", datetime.now(UTC))
    data = {"evidence_id": str(uuid4()), "case_id": case_id, "source": source,
            "observed_at": observed.isoformat(), "country": country, **fields}  # fmt: skip
    return envelope(EVIDENCE, data, source=source.replace("_", "-"))


async def submit(kafka: Kafka, data: dict[str, Any]) -> dict[str, Any]:
    message = envelope(SUBMITTED, data, source="participant-app")
    await kafka.send(SUBMITTED, message, key=data["application_id"])
    return message


async def accepted_case(kafka: Kafka, application_id: str) -> dict[str, Any]:
    found = await eventually(
        lambda: kafka.events("registration.accepted.v1", application_id=application_id), what="acceptance"
    )
    return found[0]


async def test_ready_line_names_the_broker(homeward):
    assert homeward.ready_line.startswith(f"homeward ready kafka={homeward.kafka}")


async def test_happy_path_pays_once(homeward):
    async with Kafka(homeward.kafka, outbound_and_dlq_topics()) as kafka:
        sent = await submit(kafka, submission())
        accepted = await accepted_case(kafka, sent["data"]["application_id"])
        case_id = accepted["data"]["case_id"]
        assert accepted["correlationid"] == sent["correlationid"]
        assert accepted["causationid"] == sent["id"]
        booked = (await eventually(lambda: kafka.events("travel.booked.v1", case_id=case_id), what="booking"))[0]
        flight = booked["data"]["flight_number"]
        await kafka.send(EVIDENCE, evidence(case_id, "carrier", "HN", flight_number=flight, status="landed"), case_id)
        await kafka.send(
            EVIDENCE,
            evidence(case_id, "participant_app", "HN", identity_match_score=0.93, latitude=14.07, longitude=-87.19),
            case_id,
        )
        paid = await eventually(lambda: kafka.events("stipend.disbursed.v1", case_id=case_id), what="stipend")
        verified = kafka.events("arrival.verified.v1", case_id=case_id)
        assert verified[0]["data"]["rule"] == "carrier_and_app"
        assert paid[0]["data"]["amount"] == "1000.00" and paid[0]["data"]["currency"] == "USD"
        assert paid[0]["data"]["method"] == "mobile_money"
        for event in (booked, verified[0], paid[0]):
            assert event["correlationid"] == sent["correlationid"]
            assert event["causationid"]

    # What an operator's dashboard sees: each service counts, after its commits, what it did.
    def counted(process: str, name: str, **labels: str) -> float:
        return homeward.metrics(process).get((name, frozenset(labels.items())), 0.0)

    assert counted("registration", "homeward_events_total", topic=SUBMITTED, outcome="applied") >= 1
    assert counted("registration", "homeward_outbox_published_total", topic="registration.accepted.v1") >= 1
    assert counted("disbursement", "homeward_events_total", topic="arrival.verified.v1", outcome="applied") >= 1
    assert counted("disbursement", "homeward_payouts_total", outcome="paid") >= 1
    # The relay counts after marking the row sent, a moment after the broker took the event.
    await eventually(
        lambda: counted("disbursement", "homeward_outbox_published_total", topic="stipend.disbursed.v1") >= 1,
        what="the published stipend counted",
    )
    assert counted("disbursement", "homeward_batch_seconds_count") >= 1
    # Read at the scrape: every service reports its backlog and, per partition it holds, its lag.
    scraped = homeward.metrics("arrival")
    assert ("homeward_outbox_unsent", frozenset()) in scraped
    assert ("homeward_open_cases", frozenset()) in scraped
    assert any(name == "homeward_consumer_lag" and dict(labels)["topic"] == EVIDENCE for name, labels in scraped)
    disbursement = homeward.metrics("disbursement")
    assert disbursement[("homeward_budget_available", frozenset())] > 0
    assert ("homeward_payments_waiting", frozenset({("status", "held")})) in disbursement


async def test_duplicate_person_is_refused_and_named(homeward):
    async with Kafka(homeward.kafka, outbound_and_dlq_topics()) as kafka:
        first = await submit(kafka, submission(identity_document__number="G 555-0001"))
        first_case = (await accepted_case(kafka, first["data"]["application_id"]))["data"]["case_id"]
        second = submission(identity_document__number="g5550001")
        await submit(kafka, second)
        rejected = await eventually(
            lambda: kafka.events("registration.rejected.v1", application_id=second["application_id"]),
            what="duplicate rejection",
        )
        assert rejected[0]["data"]["reasons"][0]["code"] == "duplicate_registration"
        assert rejected[0]["data"]["duplicate_of_case_id"] == first_case


async def test_resubmission_repeats_the_first_outcome(homeward):
    async with Kafka(homeward.kafka, outbound_and_dlq_topics()) as kafka:
        data = submission()
        await submit(kafka, data)
        first = await accepted_case(kafka, data["application_id"])
        await submit(kafka, data)  # the app retries: same application id, new envelope id
        both = await eventually(
            lambda: (
                len(kafka.events("registration.accepted.v1", application_id=data["application_id"])) >= 2
                and kafka.events("registration.accepted.v1", application_id=data["application_id"])
            ),
            what="repeated outcome",
        )
        assert {event["data"]["case_id"] for event in both} == {first["data"]["case_id"]}
        # One case means one booking, however often the application was submitted.
        await eventually(lambda: kafka.events("travel.booked.v1", case_id=first["data"]["case_id"]), what="booking")
        assert len(kafka.events("travel.booked.v1", case_id=first["data"]["case_id"])) == 1


async def test_evidence_sent_as_soon_as_the_case_opens_is_kept(homeward):
    async with Kafka(homeward.kafka, outbound_and_dlq_topics()) as kafka:
        data = submission(destination__country="GT", destination__airport="GUA")
        await submit(kafka, data)
        case_id = (await accepted_case(kafka, data["application_id"]))["data"]["case_id"]
        # Observed a minute ahead (within the policy's 5-minute tolerance) so it falls after departure.
        office = evidence(case_id, "partner_office", "GT", office_code="GUA-01", officer_id="o-1",
                          document_checked=True, observed_at=datetime.now(UTC) + timedelta(minutes=1))  # fmt: skip
        await kafka.send(EVIDENCE, office, case_id)
        verified = await eventually(lambda: kafka.events("arrival.verified.v1", case_id=case_id), what="verification")
        assert verified[0]["data"]["rule"] == "partner_office"
        await eventually(lambda: kafka.events("stipend.disbursed.v1", case_id=case_id), what="stipend")


async def test_bad_messages_are_dead_lettered_and_answered(homeward):
    async with Kafka(homeward.kafka, outbound_and_dlq_topics()) as kafka:
        garbage, half_envelope = b"\xff not json", b'{"specversion": "1.0"}'
        await kafka.send(SUBMITTED, garbage, key="garbage")
        invalid = submission(person__date_of_birth="14/03/1991")
        invalid_bytes = json.dumps(await submit(kafka, invalid)).encode()
        await kafka.send(EVIDENCE, half_envelope, key="half-envelope")

        def ours() -> list[tuple[dict[str, str], bytes]]:
            # Other tests of the session dead-letter too: these are this test's letters, by their bytes.
            return [(h, value) for h, value in kafka.dead_letters(SUBMITTED) if value in (garbage, invalid_bytes)]

        dead = await eventually(lambda: len(ours()) >= 2 and ours(), what="both dead letters")
        codes = {headers["x-error-code"] for headers, _ in dead}
        assert {"invalid_json", "invalid_payload"} <= codes
        assert any(value == garbage for _, value in dead)
        for headers, _ in dead:
            assert headers["x-original-topic"] == SUBMITTED
            assert {"x-error-detail", "x-original-partition", "x-original-offset"} <= set(headers)
        rejected = await eventually(
            lambda: kafka.events("registration.rejected.v1", application_id=invalid["application_id"])
        )
        reason = rejected[0]["data"]["reasons"][0]
        assert reason["code"] == "invalid_payload" and reason["field"] == "person.date_of_birth"
        evidence_dead = await eventually(
            lambda: [(h, value) for h, value in kafka.dead_letters(EVIDENCE) if value == half_envelope],
            what="evidence dead letter",
        )
        assert evidence_dead[0][0]["x-error-code"] == "invalid_envelope"
        # The services kept consuming: a good application still goes through.
        good = await submit(kafka, submission())
        await accepted_case(kafka, good["data"]["application_id"])


CANARIES = {
    "given_name": "Zebulonia",
    "family_name": "Canarywright",
    "number": "QX 771-9988",
    "phone": "+15555550199",
    "email": "canary.person@example.org",
    "account_number": "CANARYACCT12345",
    "account_name": "Zebulonia Canarywright",
    "birth": "1979-07-29",
}


async def test_no_personal_data_in_any_log_line(homeward):
    """Runs a case with canary values through the whole flow, then reads every log line."""
    data = submission(
        person__given_name=CANARIES["given_name"], person__family_name=CANARIES["family_name"],
        person__date_of_birth=CANARIES["birth"], identity_document__number=CANARIES["number"],
        contact__phone=CANARIES["phone"], contact__email=CANARIES["email"],
        payout={"method": "bank_account", "bank_code": "BANKHN", "account_number": CANARIES["account_number"],
                "account_name": CANARIES["account_name"]},
    )  # fmt: skip
    async with Kafka(homeward.kafka, outbound_and_dlq_topics()) as kafka:
        await submit(kafka, data)
        case_id = (await accepted_case(kafka, data["application_id"]))["data"]["case_id"]
        await eventually(lambda: kafka.events("travel.booked.v1", case_id=case_id), what="booking")
        office = evidence(
            case_id, "partner_office", "HN", office_code="TGU-01", officer_id="o-2", document_checked=True
        )
        await kafka.send(EVIDENCE, office, case_id)
        paid = await eventually(lambda: kafka.events("stipend.disbursed.v1", case_id=case_id), what="stipend")
        assert paid[0]["data"]["method"] == "bank_account"
        # An invalid copy too: validation errors must not echo the values either.
        broken = dict(data, application_id=str(uuid4()), contact={"phone": CANARIES["phone"], "email": 42})
        await submit(kafka, broken)
        await eventually(lambda: kafka.events("registration.rejected.v1", application_id=broken["application_id"]))
    lines = homeward.log_lines()
    assert len(lines) > 50, "expected the services to have logged the flow"
    leaks = [line for line in lines for canary in CANARIES.values() if canary in line]
    assert not leaks, f"personal data in logs: {leaks[:3]}"
    sample = [json.loads(line) for line in lines if '"event": "registration.accepted"' in line]
    assert sample and {"service", "event_type", "correlationid", "application_id"} <= set(sample[0])


async def test_ready_line_names_the_payout_and_travel_sandboxes(homeward):
    assert " payouts=http://127.0.0.1:" in homeward.ready_line
    assert " travel=http://127.0.0.1:" in homeward.ready_line


async def test_the_sandboxes_of_up_answer_only_calls_bearing_their_token(homeward):
    """`up` makes a token per sandbox (its secrets.json): the service calling it sends it, nobody else has it."""
    runtime = json.loads((homeward.state_dir / "runtime.json").read_text())
    secrets = json.loads((homeward.state_dir / "secrets.json").read_text())
    calls = [
        (f"{runtime['payouts']}/payouts", secrets["HOMEWARD_SANDBOX_PAYOUT_TOKEN"]),
        (f"{runtime['travel']}/bookings/unknown", secrets["HOMEWARD_SANDBOX_TRAVEL_TOKEN"]),
    ]
    async with httpx.AsyncClient(timeout=10) as client:
        for url, token in calls:
            assert (await client.get(url)).status_code == 401
            assert (await client.get(url, headers={"Authorization": "Bearer wrong"})).status_code == 401
            bearing = await client.get(url, headers={"Authorization": f"Bearer {token}"})
            assert bearing.status_code in (200, 404), (url, bearing.status_code)


async def test_ledger_verifies_and_reconciles_after_the_flows(homeward):
    """After every case above was paid, the operator's checks are clean, by exit code and in JSON."""
    state = ["--state-dir", str(homeward.state_dir), "--json"]
    verify = homeward_cli("ledger", "verify", *state)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout) == {"clean": True, "breaches": []}
    reconcile = homeward_cli("ledger", "reconcile", *state)
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    report = json.loads(reconcile.stdout)
    assert report["clean"] and not report["missing"] and not report["extra"]
    ledger = json.loads(homeward_cli("ledger", "balance", *state).stdout)
    balances = {row["code"]: row for row in ledger["accounts"]}
    assert float(balances["stipends_paid"]["credits_posted"]) >= 3 * 1000  # three cases above were paid
    assert float(balances["program_budget"]["available"]) >= 0
    budget = ledger["budget"]
    assert float(budget["left"]) == float(balances["program_budget"]["available"])
    assert float(budget["funded"]) - float(budget["spent"]) - float(budget["reserved"]) == float(budget["left"])


async def test_dead_letters_are_listed_and_can_be_replayed(homeward):
    state = ["--state-dir", str(homeward.state_dir)]
    listed = homeward_cli("dlq", "list", "--topic", SUBMITTED, "--json", *state)
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    garbage = [letter for letter in letters if letter["error_code"] == "invalid_json"]
    assert garbage and all(letter["original_topic"] == SUBMITTED and letter["age_ms"] >= 0 for letter in letters)
    replayed = homeward_cli("dlq", "replay", "--topic", SUBMITTED, "--id", garbage[0]["name"], *state,
                            HOMEWARD_OPERATOR="test-operator")  # fmt: skip
    assert "replayed 1 dead letter(s)" in replayed.stdout
    # Still not JSON, so it comes straight back to the dead-letter topic, and the replay says so.
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert f"came back to {SUBMITTED}.dlq" in replayed.stderr and "invalid_json" in replayed.stderr
    again = json.loads(homeward_cli("dlq", "list", "--topic", SUBMITTED, "--json", *state).stdout)
    assert len([letter for letter in again if letter["error_code"] == "invalid_json"]) > len(garbage), "none is lost"


async def test_stipend_outcomes_are_republished_with_their_envelope_ids(homeward):
    """What an operator does after the broker lost its data: the outcomes go out again, and an
    integrator that already has them sees the same envelope ids (so it deduplicates them)."""
    state = ["--state-dir", str(homeward.state_dir)]
    async with Kafka(homeward.kafka, ["stipend.disbursed.v1"]) as kafka:
        before = await eventually(lambda: kafka.events("stipend.disbursed.v1"), what="the stipends paid above")
        ids = {event["id"] for event in before}
        done = homeward_cli("dlq", "republish", "--since", "1h", "--service", "disbursement",
                            "--topic", "stipend.disbursed.v1", "--operator", "test-operator", *state)  # fmt: skip
        assert done.returncode == 0 and "back to the relays" in done.stdout, done.stdout + done.stderr

        def sent_twice() -> bool:
            copies = Counter(event["id"] for event in kafka.events("stipend.disbursed.v1"))
            return all(copies[envelope_id] >= 2 for envelope_id in ids)

        await eventually(sent_twice, what="every stipend outcome published again")


async def test_a_data_key_rotation_retires_the_old_keys_and_is_in_the_audit_trail(homeward):
    state = ["--state-dir", str(homeward.state_dir)]
    refused = homeward_cli("keys", "rotate", *state)
    assert refused.returncode == 2 and "--operator" in refused.stderr
    before = json.loads((homeward.state_dir / "secrets.json").read_text())
    rotated = homeward_cli("keys", "rotate", "--operator", "kim.ops", "--json", *state)
    assert rotated.returncode == 0, rotated.stderr
    after = json.loads((homeward.state_dir / "secrets.json").read_text())
    for name in ("HOMEWARD_DATA_KEY", "HOMEWARD_TRAVEL_DATA_KEY", "HOMEWARD_DISBURSEMENT_DATA_KEY"):
        retired = name.replace("_DATA_KEY", "_DATA_KEYS") + "_RETIRED"
        assert after[name] != before[name]
        assert after[retired].split(",")[0] == before[name]
        assert before[name] not in rotated.stdout and after[name] not in rotated.stdout
    actions = json.loads(homeward_cli("audit", "list", "--json", *state).stdout)
    [mine] = [action for action in actions if action["command"] == "keys rotate" and action["operator"] == "kim.ops"]
    assert mine["outcome"] == json.loads(rotated.stdout)
    # The services still hold the old keys: moving the case keys to the new ones waits for a restart.
    early = homeward_cli("keys", "rewrap", "--operator", "kim.ops", *state)
    assert early.returncode == 2 and "restart" in early.stderr
    planned = homeward_cli("keys", "rewrap", "--dry-run", "--json", *state)
    assert planned.returncode == 0, planned.stderr
    assert set(json.loads(planned.stdout)) == {"travel", "disbursement"}
