"""`homeward demo`: a cohort of realistic participants through the public contract, end to end,
then what Homeward decided and paid, and every breach of the payment rules it can see."""

import os
import random
import time
from pathlib import Path

from rich.console import Console

from services.devstack.running import Runtime
from services.ops.common import OpsSettings
from services.ops.world import Demo, read_ledger, running_up, summarize
from services.runtime.kafka_security import client_options

DEPARTURE_DELAY = "HOMEWARD_SANDBOX_FLIGHT_DEPARTURE_DELAY_SECONDS"
DEMO_DEPARTURE_DELAY_SECONDS = "120"


async def main(settings: OpsSettings, state_dir: Path, participants: int, timeout_seconds: float) -> int:
    console = Console()
    runtime = Runtime.read(state_dir)
    if runtime is not None:
        return await _demo(runtime, console, participants, timeout_seconds, settings)
    starting = time.monotonic()
    # Flights leave two minutes after booking, so that those who change their mind once booked are
    # in time (the world's evidence is dated the flight's arrival, within the policy's five minutes
    # ahead). A running `up` keeps its own schedule: there, they may be too late, and fly.
    env = {DEPARTURE_DELAY: DEMO_DEPARTURE_DELAY_SECONDS, **os.environ}
    async with running_up(state_dir, console, env=env) as started:
        return await _demo(started, console, participants, timeout_seconds, settings,
                           started_up_seconds=time.monotonic() - starting)  # fmt: skip


async def _demo(
    runtime: Runtime, console: Console, participants: int, timeout_seconds: float, settings: OpsSettings,
    *, started_up_seconds: float | None = None,
) -> int:  # fmt: skip
    demo = Demo(
        runtime, participants, console, random.Random(),
        metadata_max_age_ms=settings.kafka_metadata_max_age_ms, compression_type=settings.kafka_compression_type,
        kafka_options=client_options(settings), program_rules=True,
    )  # fmt: skip
    wall = await demo.run(timeout_seconds)
    if not demo.up_alive():
        console.print("Start it again (`homeward up`, or let `homeward demo` start one) and rerun the demo.")
        return 1
    table, breaches = summarize(demo, wall, await read_ledger(runtime), started_up_seconds=started_up_seconds)
    console.print(table)
    for breach in breaches:
        console.print(f"[red]breach:[/red] {breach}")
    if not breaches:
        console.print("[green]every eligible participant was paid exactly once[/green]")
    return 1 if breaches else 0
