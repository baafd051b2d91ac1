"""The ledger's promises, tried against the real PostgreSQL.

Hypothesis draws sequences of transfers, resolutions and re-submissions; after every step the
ledger must verify clean and agree with a small Python model of the balances. Each example runs
in one transaction that is rolled back, so every example starts from an empty ledger. The
concurrency tests use separate connections and commit, each in a database of its own.
"""

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID, uuid4

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from services.disbursement import domain, operations, stipends
from services.disbursement.app import queries
from services.disbursement.ledger import (
    EXCEEDS_CREDITS,
    ID_REUSED,
    PENDING_ALREADY_RESOLVED,
    ChainKey,
    Result,
    Transfer,
    create_transfer,
    create_transfers,
    post_of,
    void_of,
)
from services.runtime.db import connect, fetch_all
from services.runtime.migrate import migrate
from tests.conftest import Infra
from tests.support import TEST_CHAIN

pytestmark = pytest.mark.integration

SCHEMA = "disbursement"
CURRENCY = "USD"
OTHER_CURRENCY = "EUR"
QUERIES = queries(TEST_CHAIN)
FUNDING, BUDGET, STIPENDS = domain.FUNDING_ACCOUNT, domain.BUDGET_ACCOUNT, domain.STIPENDS_ACCOUNT
ACCOUNTS = (FUNDING, BUDGET, STIPENDS)
PAIRS = [(debit, credit) for debit in ACCOUNTS for credit in ACCOUNTS if debit != credit]
BALANCE_FIELDS = operations.BALANCE_FIELDS
CHANGEABLE_FIELDS = ("kind", "debit_account", "credit_account", "amount", "currency", "pending_id", "payment_id")
MOVES = {"single_phase": (0, 1), "pending": (1, 0), "post_pending": (-1, 1), "void_pending": (-1, 0)}
CENT = Decimal("0.01")

AMOUNT_MIN, AMOUNT_MAX = Decimal("0.01"), Decimal("5000.00")
FUNDING_MAX = Decimal("20000.00")
OPERATIONS_MIN = 5
OPERATIONS_MAX = 40
EXAMPLES_MAX = 100
PICK_MAX = 1000
RACE_ROUNDS = 20
STIPEND = Decimal("1000.00")
RESERVATIONS_FUNDED = 10
RESERVATIONS_TRIED = 30


# Databases ---------------------------------------------------------------------------------------


def _database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture(scope="module")
def new_database(infra: Infra) -> Iterator[Callable[[], str]]:
    """Makes fresh, migrated databases on the infra server; drops them when the module ends."""
    names: list[str] = []

    def make() -> str:
        name = f"ledger_prop_{uuid4().hex[:12]}"
        with psycopg.connect(infra.database_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        url = _database_url(infra.database_url, name)
        migrate(url, SCHEMA)
        return url

    yield make
    with psycopg.connect(infra.database_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def property_database(new_database: Callable[[], str]) -> str:
    """Shared by the tests that roll everything back."""
    return new_database()


@dataclass
class Session:
    """A connection on an event loop of its own: hypothesis calls the test synchronously, and the
    session loop of pytest-asyncio is not running then, but must not be replaced either."""

    loop: asyncio.AbstractEventLoop
    connection: asyncpg.Connection


@pytest.fixture(scope="module")
def session(property_database: str) -> Iterator[Session]:
    loop = asyncio.new_event_loop()
    connection = loop.run_until_complete(connect(property_database, schema=SCHEMA))
    try:
        yield Session(loop, connection)
    finally:
        loop.run_until_complete(connection.close())
        loop.close()


@pytest.fixture
async def rolled_back(property_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction that is rolled back at the end, whatever happened."""
    connection = await connect(property_database, schema=SCHEMA)
    transaction = connection.transaction()
    await transaction.start()
    try:
        yield connection
    finally:
        await transaction.rollback()
        await connection.close()


# The model ---------------------------------------------------------------------------------------


@dataclass
class Model:
    """What the ledger should hold: balances, recorded transfers and state refusals, by id."""

    balances: dict[str, dict[str, Decimal]] = field(
        default_factory=lambda: {code: dict.fromkeys(BALANCE_FIELDS, Decimal(0)) for code in ACCOUNTS}
    )
    created: dict[str, Transfer] = field(default_factory=dict)
    refused: dict[str, tuple[Transfer, str]] = field(default_factory=dict)
    pendings: list[str] = field(default_factory=list)
    resolved: set[str] = field(default_factory=set)
    issued: int = 0
    journal: list[tuple[int, str, str]] = field(default_factory=list)
    submitted: list[tuple[Transfer, Result]] = field(default_factory=list)
    """Every request in the order submitted, with its answer: the same list as one batch must
    get the same answers."""

    def next_id(self, prefix: str) -> str:
        self.issued += 1
        return f"{prefix}:{self.issued}"

    def fits(self, transfer: Transfer) -> bool:
        """Only the budget is limited: its debits, pending and posted, never exceed its posted credits."""
        if transfer.debit_account != BUDGET:
            return True
        pending_sign, posted_sign = MOVES[transfer.kind]
        budget = self.balances[BUDGET]
        debits = budget["debits_pending"] + budget["debits_posted"] + transfer.amount * (pending_sign + posted_sign)
        return debits <= budget["credits_posted"]

    def expect(self, transfer: Transfer) -> Result:
        """The outcome of a new id, recorded in the model."""
        if transfer.pending_id in self.resolved:
            return self.refuse(transfer, PENDING_ALREADY_RESOLVED)
        if not self.fits(transfer):
            return self.refuse(transfer, EXCEEDS_CREDITS)
        pending_sign, posted_sign = MOVES[transfer.kind]
        for side, account in (("debits", transfer.debit_account), ("credits", transfer.credit_account)):
            self.balances[account][f"{side}_pending"] += transfer.amount * pending_sign
            self.balances[account][f"{side}_posted"] += transfer.amount * posted_sign
        self.created[transfer.transfer_id] = transfer
        if transfer.kind == "pending":
            self.pendings.append(transfer.transfer_id)
        if transfer.pending_id is not None:
            self.resolved.add(transfer.pending_id)
        return Result("created", transfer.transfer_id)

    def refuse(self, transfer: Transfer, code: str) -> Result:
        self.refused[transfer.transfer_id] = (transfer, code)
        return Result("refused", transfer.transfer_id, code)

    def recorded(self) -> list[Transfer]:
        """Every id the ledger remembers: created transfers and state refusals."""
        return [*self.created.values(), *(request for request, _ in self.refused.values())]


# Operations --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    kind: Literal["single_phase", "pending"]
    pair: tuple[str, str]
    amount: Decimal
    payment_id: UUID | None


@dataclass(frozen=True)
class Resolve:
    pick: int
    post: bool


@dataclass(frozen=True)
class Resubmit:
    pick: int


@dataclass(frozen=True)
class ResubmitChanged:
    pick: int
    field: str


@dataclass(frozen=True)
class ResubmitRefused:
    pick: int


amounts = st.decimals(min_value=AMOUNT_MIN, max_value=AMOUNT_MAX, places=2)
picks = st.integers(min_value=0, max_value=PICK_MAX)
creates = st.builds(
    Create,
    kind=st.sampled_from(["single_phase", "pending"]),
    pair=st.sampled_from(PAIRS),
    amount=amounts,
    payment_id=st.none() | st.uuids(),
)
resolves = st.builds(Resolve, pick=picks, post=st.booleans())
# one_of chooses its branches evenly; creating and resolving appear twice so that most steps
# move money and the later re-submissions have something to refer to.
operation = st.one_of(
    creates,
    creates,
    resolves,
    resolves,
    st.builds(Resubmit, pick=picks),
    st.builds(ResubmitChanged, pick=picks, field=st.sampled_from(CHANGEABLE_FIELDS)),
    st.builds(ResubmitRefused, pick=picks),
)


def _changed(transfer: Transfer, name: str) -> Transfer:
    """The same request with exactly one field different."""
    flipped_kind = {
        "single_phase": "pending", "pending": "single_phase",
        "post_pending": "void_pending", "void_pending": "post_pending",
    }  # fmt: skip
    other_account = {code: next(other for other in ACCOUNTS if other != code) for code in ACCOUNTS}
    values: dict[str, Any] = {
        "kind": flipped_kind[transfer.kind],
        "debit_account": other_account[transfer.debit_account],
        "credit_account": other_account[transfer.credit_account],
        "amount": transfer.amount + CENT,
        "currency": OTHER_CURRENCY,
        "pending_id": f"{transfer.pending_id}:other",
        "payment_id": uuid4() if transfer.payment_id is None else None,
    }
    return replace(transfer, **{name: values[name]})


async def _submit(connection: asyncpg.Connection, model: Model, transfer: Transfer) -> Result:
    note(f"submit {transfer}")
    result = await create_transfer(connection, QUERIES.ledger, transfer, TEST_CHAIN)
    event(f"{transfer.kind}: {result.status} {result.code or ''}".strip())  # see --hypothesis-show-statistics
    model.submitted.append((transfer, result))
    return result


async def _apply(connection: asyncpg.Connection, model: Model, step: Any) -> None:
    match step:
        case Create(kind, (debit, credit), amount, payment_id):
            transfer = Transfer(model.next_id(kind), kind, debit, credit, amount, CURRENCY, None, payment_id)
            assert await _submit(connection, model, transfer) == model.expect(transfer)
        case Resolve(pick, post) if model.pendings:
            pending = model.created[model.pendings[pick % len(model.pendings)]]
            resolution = (post_of if post else void_of)(pending, model.next_id("post" if post else "void"))
            if pending.transfer_id in model.resolved:
                event("a pending transfer resolved a second time")  # which the model expects refused
            assert await _submit(connection, model, resolution) == model.expect(resolution)
        case Resubmit(pick) if model.created:
            transfer = list(model.created.values())[pick % len(model.created)]
            assert await _submit(connection, model, transfer) == Result("exists", transfer.transfer_id)
        case ResubmitChanged(pick, name) if model.recorded():
            recorded = model.recorded()
            changed = _changed(recorded[pick % len(recorded)], name)
            assert await _submit(connection, model, changed) == Result("refused", changed.transfer_id, ID_REUSED, name)
        case ResubmitRefused(pick) if model.refused:
            request, code = list(model.refused.values())[pick % len(model.refused)]
            if code == EXCEEDS_CREDITS:
                await _top_up_until_it_fits(connection, model, request)
                event("an overdraft re-submitted after a top-up")
            assert await _submit(connection, model, request) == Result("refused", request.transfer_id, code)


async def _top_up_until_it_fits(connection: asyncpg.Connection, model: Model, request: Transfer) -> None:
    """Funds the budget so that the refused request would fit now: its refusal must still stand."""
    budget = model.balances[BUDGET]
    shortfall = budget["debits_pending"] + budget["debits_posted"] + request.amount - budget["credits_posted"]
    top_up = Transfer(model.next_id("top-up"), "single_phase", FUNDING, BUDGET, max(shortfall, CENT), CURRENCY)
    assert await _submit(connection, model, top_up) == model.expect(top_up)
    assert model.fits(request)


async def _check(connection: asyncpg.Connection, model: Model) -> None:
    assert await operations.verify(connection, QUERIES, None) == []
    actual = {
        account.code: {name: getattr(account, name) for name in BALANCE_FIELDS}
        for account in await operations.balances(connection, QUERIES)
    }
    assert actual == model.balances
    budget = actual[BUDGET]
    assert budget["debits_pending"] + budget["debits_posted"] <= budget["credits_posted"]


async def _example(connection: asyncpg.Connection, funding: Decimal, steps: list[Any]) -> Model:
    transaction = connection.transaction()
    await transaction.start()
    try:
        await stipends.open_accounts(connection, QUERIES, CURRENCY)
        model = Model()
        initial = Transfer(domain.funding_transfer_id("initial"), "single_phase", FUNDING, BUDGET, funding, CURRENCY)
        assert await _submit(connection, model, initial) == model.expect(initial)
        await _check(connection, model)
        for step in steps:
            note(f"step {step}")
            await _apply(connection, model, step)
            await _check(connection, model)
        model.journal = await _journal(connection)
        return model
    finally:
        await transaction.rollback()


async def _journal(connection: asyncpg.Connection) -> list[tuple[int, str, str]]:
    return [
        (row["seq"], row["transfer_id"], row["hash"]) for row in await fetch_all(QUERIES.ledger.journal(connection))
    ]


async def _as_one_batch(connection: asyncpg.Connection, model: Model) -> None:
    """Every request of the example again, on an empty ledger, as one `create_transfers` call."""
    transaction = connection.transaction()
    await transaction.start()
    try:
        await stipends.open_accounts(connection, QUERIES, CURRENCY)
        requests = [transfer for transfer, _ in model.submitted]
        assert await create_transfers(connection, QUERIES.ledger, requests, TEST_CHAIN) == [
            result for _, result in model.submitted
        ]
        await _check(connection, model)
        assert await _journal(connection) == model.journal, "the same chain, hash for hash"
    finally:
        await transaction.rollback()


@settings(
    max_examples=EXAMPLES_MAX,
    deadline=None,
    database=None,  # no .hypothesis directory in the working tree; a failure prints its reproduction
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    funding=st.decimals(min_value=AMOUNT_MIN, max_value=FUNDING_MAX, places=2),
    steps=st.lists(operation, min_size=OPERATIONS_MIN, max_size=OPERATIONS_MAX),
)
def test_every_sequence_of_transfers_keeps_the_ledger_sound_and_is_the_same_as_one_batch(
    session: Session, funding: Decimal, steps: list[Any]
) -> None:
    model = session.loop.run_until_complete(_example(session.connection, funding, steps))
    session.loop.run_until_complete(_as_one_batch(session.connection, model))


# Concurrency: separate connections, committed transactions --------------------------------------


async def _committed(connection: asyncpg.Connection, transfer: Transfer) -> Result:
    async with connection.transaction(isolation="read_committed"):
        return await create_transfer(connection, QUERIES.ledger, transfer, TEST_CHAIN)


async def _fund(connection: asyncpg.Connection, amount: Decimal) -> None:
    async with connection.transaction(isolation="read_committed"):
        funded = await stipends.fund(connection, QUERIES, amount=amount, currency=CURRENCY, reference="initial")
    assert funded.status == "created"


async def _budget(connection: asyncpg.Connection) -> operations.Balance:
    return next(account for account in await operations.balances(connection, QUERIES) if account.code == BUDGET)


async def test_concurrent_post_and_void_of_one_pending_transfer_resolve_it_once(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    first, second = await connect(url, schema=SCHEMA), await connect(url, schema=SCHEMA)
    try:
        await _fund(first, STIPEND * RACE_ROUNDS)
        posts_won = 0
        for round_number in range(RACE_ROUNDS):
            pending = Transfer(f"race:{round_number}", "pending", BUDGET, STIPENDS, STIPEND, CURRENCY)
            assert await _committed(first, pending) == Result("created", pending.transfer_id)
            post, void = post_of(pending, f"post:{round_number}"), void_of(pending, f"void:{round_number}")
            # Alternate who starts first, so that either side gets to win and to lose.
            racers = [(first, post), (second, void)] if round_number % 2 else [(second, void), (first, post)]
            results = await asyncio.gather(*(_committed(connection, transfer) for connection, transfer in racers))
            assert sorted(result.status for result in results) == ["created", "refused"]
            assert [result.code for result in results if not result.ok] == [PENDING_ALREADY_RESOLVED]
            posts_won += any(result.ok and result.transfer_id == post.transfer_id for result in results)
            assert await operations.verify(first, QUERIES, None) == []
        budget = await _budget(first)
        assert budget.debits_pending == 0
        assert budget.debits_posted == STIPEND * posts_won
    finally:
        await first.close()
        await second.close()


async def test_concurrent_reservations_never_overdraw_the_budget(new_database: Callable[[], str]) -> None:
    url = new_database()
    connections = await asyncio.gather(*(connect(url, schema=SCHEMA) for _ in range(RESERVATIONS_TRIED)))
    try:
        await _fund(connections[0], STIPEND * RESERVATIONS_FUNDED)
        reservations = [
            Transfer(f"reserve:{number}", "pending", BUDGET, STIPENDS, STIPEND, CURRENCY)
            for number in range(RESERVATIONS_TRIED)
        ]
        results = await asyncio.gather(*map(_committed, connections, reservations))
        assert Counter((result.status, result.code) for result in results) == {
            ("created", None): RESERVATIONS_FUNDED,
            ("refused", EXCEEDS_CREDITS): RESERVATIONS_TRIED - RESERVATIONS_FUNDED,
        }
        budget = await _budget(connections[0])
        assert budget.debits_pending == STIPEND * RESERVATIONS_FUNDED
        assert budget.available == 0
        assert await operations.verify(connections[0], QUERIES, None) == []
    finally:
        await asyncio.gather(*(connection.close() for connection in connections))


# The journal cannot be rewritten, and a rewrite behind the trigger's back is detected ------------


@pytest.mark.parametrize(
    "statement", ["UPDATE transfers SET amount = amount + 1", "DELETE FROM transfers", "TRUNCATE transfers"]
)
async def test_journal_rows_cannot_be_changed(rolled_back: asyncpg.Connection, statement: str) -> None:
    await stipends.fund(rolled_back, QUERIES, amount=STIPEND, currency=CURRENCY, reference="initial")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        async with rolled_back.transaction():
            await rolled_back.execute(statement)
    journal = await rolled_back.fetch("SELECT transfer_id, amount FROM transfers")
    assert [(row["transfer_id"], row["amount"]) for row in journal] == [("fund:initial", STIPEND)]


JOURNAL_ROW = (
    "INSERT INTO transfers (seq, transfer_id, kind, debit_account, credit_account, amount, currency, pending_id,"
    " prev_hash, hash) VALUES (99, 'forged', $1, $2, $3, 1.00, 'USD', $4, 'x', 'forged-hash')"
)


@pytest.mark.parametrize(
    ("kind", "debit", "credit", "pending_id"),
    [
        ("single_phase", "nowhere", BUDGET, None),
        ("single_phase", FUNDING, "nowhere", None),
        ("post_pending", BUDGET, STIPENDS, "no-such-transfer"),
        ("post_pending", FUNDING, BUDGET, "fund:initial"),  # exists, but is not pending
    ],
    ids=["debit-account", "credit-account", "missing-pending", "not-pending"],
)
async def test_the_database_refuses_journal_rows_with_broken_references(
    rolled_back: asyncpg.Connection, kind: str, debit: str, credit: str, pending_id: str | None
) -> None:
    """Behind the ledger code's back, a row naming an unknown account or a pending transfer that
    is not one is refused by the statement-level reference check."""
    await stipends.fund(rolled_back, QUERIES, amount=STIPEND, currency=CURRENCY, reference="initial")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with rolled_back.transaction():
            await rolled_back.execute(JOURNAL_ROW, kind, debit, credit, pending_id)


@pytest.mark.parametrize("statement", ["DELETE FROM accounts", "UPDATE accounts SET code = code || '-x'"])
async def test_accounts_are_never_deleted_or_renamed(rolled_back: asyncpg.Connection, statement: str) -> None:
    await stipends.open_accounts(rolled_back, QUERIES, CURRENCY)
    with pytest.raises(asyncpg.RaiseError, match="never deleted or renamed"):
        async with rolled_back.transaction():
            await rolled_back.execute(statement)


async def test_tampering_with_an_amount_breaks_the_chain_and_the_balances(rolled_back: asyncpg.Connection) -> None:
    await stipends.fund(rolled_back, QUERIES, amount=STIPEND * 2, currency=CURRENCY, reference="initial")
    pending = Transfer("reserve:tampered", "pending", BUDGET, STIPENDS, STIPEND, CURRENCY)
    assert (await create_transfer(rolled_back, QUERIES.ledger, pending, TEST_CHAIN)).ok
    assert (await create_transfer(rolled_back, QUERIES.ledger, post_of(pending, "post:tampered"), TEST_CHAIN)).ok
    assert await operations.verify(rolled_back, QUERIES, None) == []

    # Only the table owner or a superuser can do this; the rollback puts the trigger back.
    await rolled_back.execute("ALTER TABLE transfers DISABLE TRIGGER transfers_append_only")
    await rolled_back.execute("UPDATE transfers SET amount = amount - 1 WHERE transfer_id = $1", pending.transfer_id)
    breaches = await operations.verify(rolled_back, QUERIES, None)

    chain_breach = "hash chain broken at seq 2 (reserve:tampered)"
    balance_breach = f"{BUDGET}.debits_pending is 0.00 but its transfers sum to -1.00"
    assert chain_breach in breaches, breaches
    assert balance_breach in breaches, breaches


async def test_a_rewrite_with_the_chain_recomputed_without_the_key_is_detected(
    rolled_back: asyncpg.Connection,
) -> None:
    """Someone who can write the database but lacks the ledger key changes an amount and recomputes
    every hash from there: with a key of their own, or unkeyed under the key id the rows show."""
    await stipends.fund(rolled_back, QUERIES, amount=STIPEND * 2, currency=CURRENCY, reference="initial")
    pending = Transfer("reserve:rewritten", "pending", BUDGET, STIPENDS, STIPEND, CURRENCY)
    assert (await create_transfer(rolled_back, QUERIES.ledger, pending, TEST_CHAIN)).ok
    assert (await create_transfer(rolled_back, QUERIES.ledger, post_of(pending, "post:rewritten"), TEST_CHAIN)).ok
    await rolled_back.execute("ALTER TABLE transfers DISABLE TRIGGER transfers_append_only")

    def unkeyed(prev_hash: str, seq: int, transfer: Transfer) -> str:
        canonical = "|".join([prev_hash, str(seq), *transfer.fields().values()])
        return f"{TEST_CHAIN.key_id}:{hashlib.sha256(canonical.encode()).hexdigest()}"

    for forge, breach in ((ChainKey(b"k" * 32).seal, "names key"), (unkeyed, "hash chain broken at seq 2")):
        forgery = rolled_back.transaction()  # a savepoint: each forgery is undone before the next
        await forgery.start()
        journal = await rolled_back.fetch("SELECT * FROM transfers ORDER BY seq")
        previous = journal[0]["hash"]
        for row in journal[1:]:
            amount = row["amount"] - 1
            forged = Transfer(row["transfer_id"], row["kind"], row["debit_account"], row["credit_account"],
                              amount, row["currency"], row["pending_id"], row["payment_id"])  # fmt: skip
            digest = forge(previous, row["seq"], forged)
            await rolled_back.execute(
                "UPDATE transfers SET amount = $1, prev_hash = $2, hash = $3 WHERE seq = $4",
                amount, previous, digest, row["seq"],
            )  # fmt: skip
            previous = digest
        breaches = await operations.verify(rolled_back, QUERIES, None)
        await forgery.rollback()
        assert any(breach in found for found in breaches), breaches


async def test_the_append_only_trigger_is_enabled(property_database: str) -> None:
    """Guards the tampering test's rollback: the trigger it disabled is back for everyone else."""
    connection = await connect(property_database, schema=SCHEMA)
    try:
        enabled = await connection.fetchval(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'transfers_append_only'"
        )
    finally:
        await connection.close()
    assert enabled == "O"
