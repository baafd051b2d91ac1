"""Retention and rewrapping on a real PostgreSQL, through the commands an operator runs:
`homeward retention run` erases what each service kept of a closed case once its retention is
over, and nothing else; `homeward keys rewrap` moves every case key a retired program key wraps
to the current one, a batch at a time, leaving what it cannot open for an operator."""

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from contracts.events import (
    ArrivalRejected,
    ArrivalVerified,
    CaseWithdrawn,
    StipendDisbursed,
    StipendHeld,
    TravelBookingFailed,
)
from services.runtime import casekeys, crypto
from services.runtime.db import runtime_queries
from services.runtime.migrate import migrate, migrate_audit
from services.runtime.retention import RetentionSweeper
from services.runtime.service import ServiceDefinition, _check_case_keys_open, _closing_routes, load_service
from services.runtime.uow import ServiceDatabase
from tests.conftest import Infra
from tests.integration.helpers import new_database
from tests.support import homeward_cli

OLD, NEW, FOREIGN = crypto.Keyring(b"o" * 32), crypto.Keyring(b"n" * 32), crypto.Keyring(b"f" * 32)
LATE = crypto.Keyring(b"l" * 32)
TRAVEL_RETENTION = load_service("travel").retention
REWRAPPED_CASES = 1_001
"""More than two of the command's batches, so that it pages through them."""


@pytest.fixture(scope="module")
def database_url(infra: Infra) -> Iterator[str]:
    """A database of this module's own, migrated like any other: erasing "every case due" here
    touches no other module's cases."""
    url = new_database(infra, "homeward_retention")
    for service in ("registration", "travel", "arrival", "disbursement"):
        migrate(url, service)
    migrate_audit(url)
    yield url


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Connections that see travel's schema, as travel's own pool does."""
    created = await asyncpg.create_pool(database_url, server_settings={"search_path": "travel"}, min_size=1, max_size=2)
    assert created is not None
    yield created
    await created.close()


def cli(database_url: str, *arguments: str, **settings: str) -> dict:
    done = homeward_cli(*arguments, "--json", HOMEWARD_DATABASE_URL=database_url, **settings)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict = json.loads(done.stdout)
    return result


async def test_retention_run_erases_what_registration_kept_of_a_closed_case_and_nothing_more(database_url: str):
    closed, still_open = uuid4(), uuid4()
    connection = await asyncpg.connect(database_url, server_settings={"search_path": "registration"})
    try:
        for case_id in (closed, still_open):
            application_id = uuid4()
            outcome = {"case_id": str(case_id), "sealed": "v3~traveler.k.w.c", "identity_key": "ik"}
            await connection.execute(
                "INSERT INTO applications (application_id, correlationid, outcome_topic, outcome_data) "
                "VALUES ($1, $2, 'registration.accepted.v1', $3::jsonb)", application_id, uuid4(), json.dumps(outcome),
            )  # fmt: skip
            await connection.execute(
                "INSERT INTO cases (case_id, application_id, identity_key, sealed, consent_version, consented_at) "
                "VALUES ($1, $2, $3, 'v3~traveler.k.w.c', 'consent-v2', now())", case_id, application_id, uuid4().hex,
            )  # fmt: skip
            await connection.execute(
                "INSERT INTO outbox (topic, key, value, sent_at) "
                "VALUES ('registration.accepted.v1', $1, '\\x00', now())",
                str(case_id),
            )  # fmt: skip
        await connection.execute(
            "INSERT INTO closed_cases (case_id, closed_by) VALUES ($1, 'stipend.disbursed.v1')", closed
        )

        waiting = cli(database_url, "retention", "run", "--service", "registration", "--dry-run")
        assert waiting["services"]["registration"] == {"erased_now": 0, "due": 0, "waiting": 1, "erased": 0}
        erased = cli(
            database_url, "retention", "run", "--service", "registration", "--operator", "ana",
            HOMEWARD_PII_RETENTION_DAYS="0",
        )  # fmt: skip
        assert erased["services"]["registration"] == {"erased_now": 1, "due": 0, "waiting": 0, "erased": 1}

        rows = {row["case_id"]: row for row in await connection.fetch(
            "SELECT c.case_id, c.sealed, c.consent_version, a.outcome_data->>'sealed' AS outcome, "
            "a.outcome_data->>'identity_key' AS identity_key, "
            "(SELECT count(*) FROM outbox o WHERE o.key = c.case_id::text) AS outbox_rows "
            "FROM cases c JOIN applications a USING (application_id)"
        )}  # fmt: skip
        assert (rows[closed]["sealed"], rows[closed]["outcome"], rows[closed]["outbox_rows"]) == ("erased",) * 2 + (0,)
        assert (rows[closed]["consent_version"], rows[closed]["identity_key"]) == ("consent-v2", "ik")
        assert (rows[still_open]["sealed"], rows[still_open]["outbox_rows"]) == ("v3~traveler.k.w.c", 1)
        [action] = await connection.fetch("SELECT operator, arguments FROM audit.operator_actions")
        assert action["operator"] == "ana" and json.loads(action["arguments"])["retention_days"] == 0

        again = cli(database_url, "retention", "run", "--service", "registration", "--operator", "ana",
                    HOMEWARD_PII_RETENTION_DAYS="0")  # fmt: skip
        assert again["services"]["registration"]["erased_now"] == 0
    finally:
        await connection.close()


async def test_a_case_key_that_arrives_after_its_case_was_erased_is_kept_destroyed(pool: asyncpg.Pool):
    late, fresh = uuid4(), uuid4()
    await pool.execute(
        "INSERT INTO closed_cases (case_id, closed_by, erased_at) VALUES ($1, 'arrival.rejected.v1', now())", late
    )
    sealed = {case_id: casekeys.seal_case({casekeys.TRAVELER: LATE}, {casekeys.TRAVELER: {"n": 1}},
                                          case_id=str(case_id)) for case_id in (late, fresh)}  # fmt: skip
    async with ServiceDatabase(pool, "travel", runtime_queries()).unit() as uow:
        parts = [casekeys.take(sealed[case_id], casekeys.TRAVELER) for case_id in (late, fresh)]
        await casekeys.keep_case_keys(uow, [late, fresh], parts, LATE)
    rows = {row["case_id"]: row for row in await pool.fetch("SELECT * FROM case_keys WHERE case_id = ANY($1)",
                                                            [late, fresh])}  # fmt: skip
    assert rows[late]["wrapped"] is None and rows[late]["destroyed_at"] is not None
    assert rows[fresh]["wrapped"] is not None


async def test_keys_rewrap_moves_every_case_key_of_a_retired_key_to_the_current_one(database_url: str):
    case_keys = {uuid4(): crypto.new_key() for _ in range(REWRAPPED_CASES)}
    foreign, current = uuid4(), uuid4()

    def wrapped_by(keyring: crypto.Keyring, case_id: UUID, case_key: bytes) -> tuple[str, str]:
        return casekeys.wrap(keyring, case_key, case_id=str(case_id), purpose=casekeys.TRAVELER)

    rows = [(case_id, *wrapped_by(OLD, case_id, key)) for case_id, key in case_keys.items()]
    rows += [
        (foreign, *wrapped_by(FOREIGN, foreign, crypto.new_key())),
        (current, *wrapped_by(NEW, current, b"c" * 32)),
    ]
    connection = await asyncpg.connect(database_url, server_settings={"search_path": "travel"})
    try:
        await connection.executemany("INSERT INTO case_keys (case_id, key_id, wrapped) VALUES ($1, $2, $3)", rows)
        keys = {"HOMEWARD_DATA_KEY": NEW.current.hex(), "HOMEWARD_DATA_KEYS_RETIRED": OLD.current.hex()}
        planned = cli(database_url, "keys", "rewrap", "--service", "travel", "--dry-run", **keys)
        before = planned["travel"]["before"]
        assert (before[OLD.current_id], before[FOREIGN.current_id], before[NEW.current_id]) == (REWRAPPED_CASES, 1, 1)
        assert planned["travel"]["rewrapped"] == 0

        done = cli(database_url, "keys", "rewrap", "--service", "travel", "--operator", "kim", **keys)
        assert (done["travel"]["rewrapped"], done["travel"]["unopened"]) == (REWRAPPED_CASES, 0)

        after = {row["case_id"]: row for row in await connection.fetch("SELECT * FROM case_keys")}
        for case_id, case_key in case_keys.items():
            row = after[case_id]
            assert row["key_id"] == NEW.current_id and row["rewrapped_at"] is not None
            opened = casekeys.unwrap(crypto.Keyring(NEW.current), row["key_id"], row["wrapped"], case_id=str(case_id),
                                     purpose=casekeys.TRAVELER)  # fmt: skip
            assert opened == case_key
        assert after[foreign]["key_id"] == FOREIGN.current_id, "a key it does not hold is left for an operator"
        assert after[current]["rewrapped_at"] is None
        count = await connection.fetchval("SELECT count(*) FROM audit.operator_actions WHERE command = 'keys rewrap'")
        assert count == 1
    finally:
        await connection.close()


async def test_a_services_own_sweep_erases_what_is_due_and_only_that(pool: asyncpg.Pool):
    due, recent = uuid4(), uuid4()
    for case_id, closed_days_ago in ((due, 91), (recent, 89)):
        part = casekeys.take(
            casekeys.seal_case({casekeys.TRAVELER: LATE}, {casekeys.TRAVELER: {"n": 1}}, case_id=str(case_id)),
            casekeys.TRAVELER,
        )
        await pool.execute(
            "INSERT INTO bookings (case_id, correlationid, cause_event_id, origin_airport, destination_airport, "
            "sealed) VALUES ($1, $2, $3, 'IAH', 'TGU', $4)", case_id, uuid4(), uuid4(), part.ciphertext,
        )  # fmt: skip
        await pool.execute(
            "INSERT INTO case_keys (case_id, key_id, wrapped) VALUES ($1, $2, $3)",
            case_id,
            part.key_id,
            part.wrapped,
        )
        await pool.execute(
            "INSERT INTO closed_cases (case_id, closed_by, closed_at) "
            "VALUES ($1, 'stipend.disbursed.v1', now() - make_interval(days => $2))", case_id, closed_days_ago,
        )  # fmt: skip
    sweeper = RetentionSweeper(
        pool=pool, runtime_queries=runtime_queries(), retention=TRAVEL_RETENTION, days=90, batch_size_max=10
    )
    assert await sweeper.sweep() >= 1
    rows = {row["case_id"]: row for row in await pool.fetch(
        "SELECT b.case_id, b.sealed, k.wrapped FROM bookings b JOIN case_keys k USING (case_id) "
        "WHERE b.case_id = ANY($1)", [due, recent],
    )}  # fmt: skip
    assert (rows[due]["sealed"], rows[due]["wrapped"]) == ("erased", None)
    assert rows[recent]["sealed"].startswith("v3.") and rows[recent]["wrapped"] is not None


def test_closing_events_feed_the_redrive_and_the_erasure_through_one_route_per_topic() -> None:

    # Travel's copy runs from its own booking outcome, or a withdrawal: the re-drive's topics and that one.
    definition = ServiceDefinition(name="travel", routes={})
    _closing_routes(definition, load_service("travel"))
    assert {topic: modules(route) for topic, route in definition.routes.items()} == {
        ArrivalRejected.TOPIC: ["services.runtime.redrive"], ArrivalVerified.TOPIC: ["services.runtime.redrive"],
        CaseWithdrawn.TOPIC: ["services.runtime.redrive", "services.runtime.retention"],
    }  # fmt: skip
    registration = ServiceDefinition(name="registration", routes={})
    _closing_routes(registration, load_service("registration"))
    assert modules(registration.routes[StipendDisbursed.TOPIC]) == [
        "services.runtime.redrive",
        "services.runtime.retention",
    ]
    held = modules(registration.routes[StipendHeld.TOPIC])
    assert held == ["services.runtime.redrive"], "a held stipend is not closed: it may still be paid"
    disbursement = ServiceDefinition(name="disbursement", routes={})
    _closing_routes(disbursement, load_service("disbursement"))
    assert set(disbursement.routes) == {ArrivalRejected.TOPIC, TravelBookingFailed.TOPIC, CaseWithdrawn.TOPIC}
    assert load_service("arrival").retention is None, "arrival keeps no personal data"


def modules(route: Any) -> list[str]:
    """Where the closing steps a route runs come from (the re-drive's, the erasure's)."""
    return [step.__module__ for step in route.batch.args[0]]


async def test_a_closing_event_a_service_emits_closes_the_case_in_the_same_transaction(pool: asyncpg.Pool):
    failed, kept_open = uuid4(), uuid4()
    database = ServiceDatabase(
        pool, "travel", runtime_queries(), closing_topics=load_service("travel").retention.decides
    )
    with contextlib.suppress(RuntimeError):
        async with database.unit() as uow:
            uow.emit(booking_failed(kept_open), correlationid=uuid4(), causationid=None)
            raise RuntimeError("rolled back: nothing closes")
    async with database.unit() as uow:
        uow.emit(booking_failed(failed), correlationid=uuid4(), causationid=None)
    rows = await pool.fetch("SELECT case_id, closed_by FROM closed_cases WHERE case_id = ANY($1)", [failed, kept_open])
    assert [tuple(row) for row in rows] == [(failed, TravelBookingFailed.TOPIC)]


def booking_failed(case_id: UUID) -> TravelBookingFailed:
    return TravelBookingFailed(case_id=case_id, reason="provider_refused", attempts=1, failed_at=datetime.now(UTC))


async def test_a_reader_whose_case_keys_need_a_key_it_lacks_refuses_to_start(pool: asyncpg.Pool):
    await pool.execute(
        "INSERT INTO case_keys (case_id, key_id, wrapped) VALUES ($1, $2, 'x')", uuid4(), FOREIGN.current_id
    )
    with pytest.raises(SystemExit, match=FOREIGN.current_id):
        await _check_case_keys_open(pool, crypto.Keyring(NEW.current, (OLD.current, LATE.current)), "travel")


async def test_backfill_notes_the_cases_closed_before_closings_were_noted_with_when_they_closed(database_url: str):
    failed_booking, rejected = uuid4(), uuid4()
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "INSERT INTO travel.bookings (case_id, correlationid, cause_event_id, origin_airport, destination_airport, "
            "sealed, status, updated_at) "
            "VALUES ($1, $2, $3, 'IAH', 'TGU', 'v2.k.x', 'failed', now() - interval '100 days')",
            failed_booking, uuid4(), uuid4(),
        )  # fmt: skip
        await connection.execute(
            "INSERT INTO arrival.outcomes (case_id, outcome, decided_at) "
            "VALUES ($1, 'rejected', now() - interval '3 days')",
            rejected,
        )
        planned = cli(database_url, "retention", "backfill", "--dry-run")
        assert planned["closed_cases"] >= 2 and set(planned["noted"].values()) == {0}
        done = cli(database_url, "retention", "backfill", "--operator", "ana")
        assert set(done["noted"]) == {"registration", "travel", "disbursement"}
        for schema in ("registration", "travel", "disbursement"):
            rows = {row["case_id"]: row for row in await connection.fetch(
                f"SELECT case_id, closed_by, now() - closed_at > interval '90 days' AS old FROM {schema}.closed_cases "
                "WHERE case_id = ANY($1)", [failed_booking, rejected],
            )}  # fmt: skip
            assert (rows[failed_booking]["closed_by"], rows[failed_booking]["old"]) == (
                "travel.booking_failed.v1",
                True,
            )
            if schema == "travel":  # its copy runs from its bookings' outcomes alone
                assert rejected not in rows
            else:
                assert (rows[rejected]["closed_by"], rows[rejected]["old"]) == ("arrival.rejected.v1", False)
        again = cli(database_url, "retention", "backfill", "--operator", "ana")
        assert again["closed_cases"] == done["closed_cases"]
    finally:
        await connection.close()
