"""`homeward chaos`: a cohort flows while processes are killed, the database restarts and the
broker loses all its data; afterwards every case owed a stipend must be paid exactly once.

The harness plays the world as it is: apps and carriers retry what got no answer. Homeward's part
is to lose nothing and pay nobody twice."""

import asyncio
import contextlib
import json
import os
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from contracts.events import EVIDENCE_TOPIC, RegistrationSubmitted, WithdrawalRequested
from services.devstack.embedded import free_port
from services.devstack.running import STATUS_FILE, Runtime, service_of
from services.ops.common import READ_ONLY, OpsSettings, ledger_chain, payout_provider
from services.ops.world import Demo, running_up
from services.runtime.kafka_security import client_options
from services.runtime.produce import Record
from services.runtime.settings import SERVICE_NAMES

# Fault drills: restart the database after the first kill, wipe the broker after the second.
POSTGRES_RESTART_AFTER_KILLS = 1
BROKER_WIPE_AFTER_KILLS = 2
KILLABLE = ("registration", "travel", "arrival", "disbursement", "sandbox-payouts", "sandbox-travel")
WORLD_RETRY_SECONDS = 10.0
RESEND_CONCURRENCY_MAX = 200
RESEND_WAIT_SECONDS = 10.0
RESEND_WAIT_SECONDS_MAX = 60.0
LEDGER_CHECK_SECONDS = 2.0
SETTLE_SECONDS_MAX = 120.0
SETTLE_POLL_SECONDS = 1.0
PROVIDER_ATTEMPTS_MAX = 10
# The embedded default re-drives in minutes; under chaos it should notice lost events in seconds,
# but not so fast that a case merely queued behind 5,000 others is re-driven every few seconds: with
# 5 s doubling to a 20 s cap, disbursement skipped 52,000 duplicates in a 5,000-participant run.
# (A SIGKILLed consumer holds its partitions until its session times out: `up` gives the services a
# 2 s session on its embedded broker, so a killed service consumes again within about 3 s.)
CHAOS_ENV = {
    # Flights leave two minutes after booking, so that those who change their mind once booked can
    # still withdraw (contract v1.1); the world's evidence is dated the flight's arrival.
    "HOMEWARD_SANDBOX_FLIGHT_DEPARTURE_DELAY_SECONDS": "120",
    "HOMEWARD_REDRIVE_AFTER_SECONDS": "10",
    "HOMEWARD_REDRIVE_CAP_SECONDS": "60",
    "HOMEWARD_REDRIVE_INTERVAL_MS": "1000",
    # After the broker wipe, producers must learn the re-created topics' partitions in seconds, not
    # minutes: records sent by the old count land on partitions no consumer reads (re-driven later).
    "HOMEWARD_KAFKA_METADATA_MAX_AGE_MS": "5000",
}


@dataclass
class Monkey:
    """Kills a random process every `interval` seconds (the first one a service's) and runs the two
    drills once each."""

    up_pid: int
    state_dir: Path
    interval: float
    rng: random.Random
    kills: Counter[str] = field(default_factory=Counter)
    postgres_restarts: int = 0
    broker_wipes: int = 0

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)
            if stopping.is_set():
                return
            self._kill_one()
            done = sum(self.kills.values())
            if done >= POSTGRES_RESTART_AFTER_KILLS and not self.postgres_restarts:
                os.kill(self.up_pid, signal.SIGUSR1)
                self.postgres_restarts += 1
            elif done >= BROKER_WIPE_AFTER_KILLS and not self.broker_wipes:
                os.kill(self.up_pid, signal.SIGUSR2)
                self.broker_wipes += 1

    def _kill_one(self) -> None:
        processes = json.loads((self.state_dir / STATUS_FILE).read_text())["processes"]
        alive = [p for p in processes if service_of(p["name"]) in KILLABLE and p.get("alive") and p.get("pid")]
        # Until a service process has been killed, only service processes are drawn: a short run
        # (a few kills) must not spend them all on the sandboxes.
        if not any(service_of(name) in SERVICE_NAMES for name in self.kills):
            alive = [p for p in alive if service_of(p["name"]) in SERVICE_NAMES] or alive
        if not alive:
            return
        victim = self.rng.choice(alive)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim["pid"], signal.SIGKILL)
            self.kills[victim["name"]] += 1


class World(Demo):
    """The demo's cohort, plus what real apps and carriers do when nothing comes back: try again."""

    ledger_checked_at: float = 0.0
    monkey: "Monkey | None" = None

    def __init__(self, *arguments: Any, **options: Any) -> None:
        super().__init__(*arguments, **options)
        self.sent_at: dict[tuple[str, str], float] = {}
        self.resends: Counter[tuple[str, str]] = Counter()

    async def finished(self) -> bool:
        """Done when both drills ran and the events say so, or the ledger does: a wiped broker loses
        stipend events that were already published (no Homeward consumer re-asks for them), not the
        payments."""
        if self.monkey is not None and not (self.monkey.postgres_restarts and self.monkey.broker_wipes):
            return False
        if await super().finished():
            return True
        if time.monotonic() - self.ledger_checked_at < LEDGER_CHECK_SECONDS:
            return False
        self.ledger_checked_at = time.monotonic()
        from services.runtime.db import TRANSIENT_ERRORS, connect

        try:
            connection = await connect(self.runtime.database_url_of(READ_ONLY), schema="disbursement")
            try:
                paid = await connection.fetchval("SELECT count(*) FROM payments WHERE status = 'disbursed'")
            finally:
                await connection.close()
        except TRANSIENT_ERRORS:
            return False  # the database is restarting (the drill); ask again on the next check
        decided = len(self.tally.decided) >= len(self.cohort)
        return decided and not self.tally.awaiting and paid >= await owed(self.runtime, self)

    async def publish(self, records: list[Record]) -> None:
        """Publishes like the demo, and notes when, so that a resend waits for the answer's time."""
        moment = time.monotonic()
        for record in records:
            self.sent_at[(record.topic, record.key.decode())] = moment
        await super().publish(records)

    async def _review_held(self) -> None:
        """Releases, as the world's two reviewers, every payment held for review, read from the
        ledger (a held event a broker wipe lost would leave it waiting otherwise)."""
        from services.runtime.db import TRANSIENT_ERRORS, connect

        try:
            connection = await connect(self.runtime.database_url_of(READ_ONLY), schema="disbursement")
            try:
                held = [row["payment_id"] for row in await connection.fetch(
                    "SELECT payment_id FROM payments WHERE status = 'held' AND hold_reason = 'instrument_shared'"
                )]  # fmt: skip
            finally:
                await connection.close()
            if held:
                await self._review(held)
        except TRANSIENT_ERRORS:
            return  # the database is restarting (the drill); the next round reviews them

    def overdue(self, topic: str, key: str) -> bool:
        """No answer within the wait, which doubles with each resend of the same thing, as apps back off."""
        resends = self.resends[(topic, key)]
        wait = min(RESEND_WAIT_SECONDS_MAX, RESEND_WAIT_SECONDS * 2.0**resends)
        return time.monotonic() - self.sent_at.get((topic, key), 0.0) >= wait

    async def retry_forever(self, stopping: asyncio.Event) -> None:
        """Resends what got no answer in time, many at a time like a fleet of apps would (one at a
        time, 5,000 cases behind took minutes to catch up after a wipe), each with its own backoff
        (resending everything unanswered every round floods a service that is merely behind)."""
        limiter = asyncio.Semaphore(RESEND_CONCURRENCY_MAX)

        async def resend(topic: str, key: str, send: Callable[[], Awaitable[None]]) -> None:
            async with limiter:
                if not stopping.is_set():
                    self.resends[(topic, key)] += 1
                    await send()

        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), WORLD_RETRY_SECONDS)
            sends = [
                resend(RegistrationSubmitted.TOPIC, str(p.application_id), partial(self.submit, p))
                for p in self.cohort
                if p.application_id not in self.tally.decided
                and self.overdue(RegistrationSubmitted.TOPIC, str(p.application_id))
            ]
            for case_id, messages in list(self.evidence.items()):
                key = str(case_id)
                if case_id not in self.tally.verified and self.overdue(EVIDENCE_TOPIC, key):
                    sends += [resend(EVIDENCE_TOPIC, key, partial(self.publish, [m])) for m in messages]
            for case_id in list(self.tally.awaiting):  # withdrawals unanswered: the same request again
                key = str(case_id)
                if self.overdue(WithdrawalRequested.TOPIC, key):
                    sends.append(resend(WithdrawalRequested.TOPIC, key, partial(self._withdraw, [case_id])))
            sends.append(self._review_held())
            outcomes = await asyncio.gather(*sends, return_exceptions=True)
            for outcome in outcomes:
                # The broker being away is why we retry; the next round tries again. Anything else is a bug.
                if isinstance(outcome, BaseException) and not isinstance(outcome, KafkaError):
                    raise outcome


@dataclass(frozen=True)
class Verdict:
    eligible: int
    paid: int
    identities_paid_twice: int
    stuck: int
    breaches: list[str]


async def judge(runtime: Runtime, world: World) -> Verdict:
    """Reads the ledger and the provider after the run: who was paid, how often, and what is stuck."""
    from services.disbursement import operations
    from services.disbursement.app import queries
    from services.runtime.db import connect

    eligible = await owed(runtime, world)
    # The monkey may have just killed the payouts sandbox, and the supervisor backs off up to
    # 30 s when a process keeps dying young: the audit asks the provider for up to about a minute.
    provider = payout_provider(
        runtime.payouts, attempts_max=PROVIDER_ATTEMPTS_MAX, backoff_initial_seconds=0.5,
        state_dir=Path(runtime.state_dir),
    )  # fmt: skip
    connection = await connect(runtime.database_url_of(READ_ONLY), schema="disbursement")
    try:
        deadline = time.monotonic() + SETTLE_SECONDS_MAX
        while True:
            counts = {row["status"]: row["payments"] for row in await connection.fetch(
                "SELECT status, count(*) AS payments FROM payments GROUP BY status"
            )}  # fmt: skip
            stuck = counts.get("reserved", 0) + counts.get("held", 0)
            if (counts.get("disbursed", 0) >= eligible and not stuck) or time.monotonic() > deadline:
                break
            await asyncio.sleep(SETTLE_POLL_SECONDS)
        twice = await queries().payments.identities_paid_twice(connection)
        withdrawn_paid = await connection.fetchval(
            "SELECT count(*) FROM payments p JOIN arrival.outcomes o USING (case_id)"
            " WHERE o.outcome = 'withdrawn' AND p.status IN ('disbursed', 'returned')"
        )
        chain = ledger_chain(Path(runtime.state_dir))
        breaches, _ = await operations.audit(connection, queries(chain), provider.list_payouts)
    finally:
        await connection.close()
        await provider.close()
    paid = counts.get("disbursed", 0)
    if paid != eligible:
        breaches.append(f"{paid} paid, {eligible} owed a stipend")
    if twice:
        breaches.append(f"{twice} identities paid more than once")
    if withdrawn_paid:
        breaches.append(f"{withdrawn_paid} withdrawn case(s) paid")
    if stuck:
        breaches.append(f"{stuck} payments stuck reserved or held")
    return Verdict(eligible, paid, twice, stuck, breaches)


async def owed(runtime: Runtime, world: World) -> int:
    """Who is owed a stipend: the eligible, less those arrival withdrew (read from its outcomes,
    which a broker wipe cannot lose)."""
    from services.runtime.db import connect

    eligible = Counter(p.expected for p in world.cohort)["accepted"]
    connection = await connect(runtime.database_url_of(READ_ONLY), schema="arrival")
    try:
        withdrawn: int = await connection.fetchval("SELECT count(*) FROM outcomes WHERE outcome = 'withdrawn'")
    finally:
        await connection.close()
    return eligible - withdrawn


def _stipend_amount() -> Decimal:
    from services.disbursement.settings import ProgramSettings

    return ProgramSettings().program_amount


def report(console: Console, world_wall: float, monkey: Monkey, verdict: Verdict, participants: int) -> None:
    table = Table(title="Homeward chaos run")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("participants", participants), ("owed a stipend", verdict.eligible), ("paid", verdict.paid),
        ("identities paid twice", verdict.identities_paid_twice), ("payments stuck", verdict.stuck),
        ("processes killed", sum(monkey.kills.values())),
        ("kills by process", ", ".join(f"{name} {count}" for name, count in sorted(monkey.kills.items())) or "-"),
        ("database restarts", monkey.postgres_restarts), ("broker wipes", monkey.broker_wipes),
        ("cohort wall time", f"{world_wall:.1f} s"),
        ("ledger verify and reconcile", "clean" if not verdict.breaches else f"{len(verdict.breaches)} breach(es)"),
    ]  # fmt: skip
    for measure, value in rows:
        table.add_row(measure, str(value))
    console.print(table)
    for breach in verdict.breaches:
        console.print(f"[red]breach:[/red] {breach}")


async def main(
    participants: int, kill_every: float, timeout_seconds: float, state_dir: Path | None, replicas: int = 1
) -> int:
    console = Console()
    state = state_dir or Path(tempfile.mkdtemp(prefix="homeward-chaos-"))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HOMEWARD_DATABASE_URL", "HOMEWARD_KAFKA_BOOTSTRAP")
    }
    # The run asks whether everyone owed a stipend is paid once: unless told otherwise, the
    # program's budget pays the whole cohort (the default pays 10,000; the rest would be held).
    env.setdefault("HOMEWARD_PROGRAM_BUDGET", f"{participants * _stipend_amount():.2f}")
    arguments = ("--kafka-port", str(free_port()), "--replicas", str(replicas))
    async with running_up(state, console, arguments=arguments, env={**env, **CHAOS_ENV}) as runtime:
        rng = random.Random()
        metadata_max_age_ms = int(CHAOS_ENV["HOMEWARD_KAFKA_METADATA_MAX_AGE_MS"])
        world = World(
            runtime, participants, console, rng,
            metadata_max_age_ms=metadata_max_age_ms, compression_type=OpsSettings().kafka_compression_type,
            kafka_options=client_options(OpsSettings()), program_rules=True,
        )  # fmt: skip
        monkey = Monkey(runtime.pid, state, kill_every, rng)
        world.monkey = monkey
        stopping = asyncio.Event()
        helpers = [asyncio.create_task(monkey.run(stopping)), asyncio.create_task(world.retry_forever(stopping))]
        try:
            wall = await world.run(timeout_seconds)
        finally:
            stopping.set()
            await asyncio.gather(*helpers, return_exceptions=True)
        verdict = await judge(runtime, world)
        report(console, wall, monkey, verdict, participants)
        return 1 if verdict.breaches else 0
