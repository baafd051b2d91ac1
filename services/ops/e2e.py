"""`homeward bench e2e`: a cohort through the public topics of a running `homeward up`, timed.

The world is the demo's (apps register, carriers and apps answer every booking with evidence),
with a clock on each case: when it was submitted, and when registration accepted it, travel
booked it, arrival verified it and disbursement paid it, as seen on the public topics. It reports
the sustained rate, latency percentiles per stage, CPU seconds and resident memory per process
(read from /proc), and pgbench -N on the same PostgreSQL server in the same run, for the ratio.
"""

import asyncio
import contextlib
import json
import os
import platform
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.table import Table

from contracts.events import ArrivalVerified, RegistrationAccepted, StipendDisbursed, TravelBooked
from services.devstack.supervisor import STATUS_FILE, Runtime
from services.ops.common import OpsSettings, measure_table
from services.ops.pgbench import throwaway_tps
from services.ops.world import Demo, LedgerView, Participant, read_ledger, summarize

STAGES = {
    RegistrationAccepted.TOPIC: "accepted",
    TravelBooked.TOPIC: "booked",
    ArrivalVerified.TOPIC: "verified",
    StipendDisbursed.TOPIC: "disbursed",
}
PERCENTILES = (50, 95, 99)
SAMPLE_INTERVAL_SECONDS = 1.0
SAMPLES_MAX = 100_000
PGBENCH_CLIENTS = 8
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class TimedWorld(Demo):
    """The demo's world, noting when each case was submitted and when each stage came back."""

    def __init__(self, *arguments: Any, **options: Any) -> None:
        super().__init__(*arguments, **options)
        self.submitted_at: dict[UUID, float] = {}
        self.seen_at: dict[str, dict[UUID, float]] = {stage: {} for stage in STAGES.values()}
        self.application_of: dict[UUID, UUID] = {}

    async def submit(self, participant: Participant) -> None:
        self.submitted_at.setdefault(participant.application_id, time.time())
        await super().submit(participant)

    async def _observe(self, topic: str, envelope: dict[str, Any]) -> None:
        stage = STAGES.get(topic)
        if stage is not None:
            data = envelope["data"]
            self.seen_at[stage].setdefault(UUID(data["case_id"]), time.time())
            if topic == RegistrationAccepted.TOPIC:
                self.application_of[UUID(data["case_id"])] = UUID(data["application_id"])
        await super()._observe(topic, envelope)

    def latencies(self) -> dict[str, list[float]]:
        """Seconds from submission to each stage, for every case that reached it."""
        found: dict[str, list[float]] = {stage: [] for stage in STAGES.values()}
        for stage, seen in self.seen_at.items():
            for case_id, moment in seen.items():
                application = self.application_of.get(case_id)
                if application is not None and application in self.submitted_at:
                    found[stage].append(moment - self.submitted_at[application])
        return found


def percentile(values: list[float], rank: int) -> float | None:
    """The nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(rank / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def _process_table() -> dict[int, tuple[int, int, int]]:
    """Every process now: pid -> (parent pid, CPU ticks used, resident pages)."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces; the fields after its closing parenthesis do not.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]))
    return table


def _tree(pid: int, table: dict[int, tuple[int, int, int]]) -> Iterator[int]:
    """`pid` and its descendants (PostgreSQL's work happens in its backends)."""
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(child)
    pending = [pid]
    while pending:
        current = pending.pop()
        if current in table:
            yield current
            pending.extend(children.get(current, []))


@dataclass
class ProcessSampler:
    """CPU seconds and resident memory of each process `homeward up` supervises, by name."""

    state_dir: Path
    cpu_start: dict[str, float] = field(default_factory=dict)
    rss_bytes: dict[str, list[int]] = field(default_factory=dict)

    def _supervised(self) -> dict[str, int]:
        try:
            processes = json.loads((self.state_dir / STATUS_FILE).read_text())["processes"]
        except (OSError, ValueError, KeyError):
            return {}
        return {process["name"]: process["pid"] for process in processes if process.get("pid")}

    def read(self) -> dict[str, tuple[float, int]]:
        table = _process_table()
        found = {}
        for name, pid in self._supervised().items():
            members = list(_tree(pid, table))
            ticks = sum(table[member][1] for member in members)
            pages = sum(table[member][2] for member in members)
            found[name] = (ticks / CLOCK_TICKS, pages * PAGE_BYTES)
        return found

    def start(self) -> None:
        self.cpu_start = {name: cpu for name, (cpu, _) in self.read().items()}

    async def sample(self, stopping: asyncio.Event) -> None:
        for _ in range(SAMPLES_MAX):
            for name, (_, rss) in self.read().items():
                self.rss_bytes.setdefault(name, []).append(rss)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), SAMPLE_INTERVAL_SECONDS)
            if stopping.is_set():
                return

    def cpu_seconds(self) -> dict[str, float]:
        """CPU used since `start`; a process restarted meanwhile counts from its new start."""
        return {name: round(cpu - self.cpu_start.get(name, 0.0), 2) for name, (cpu, _) in self.read().items()}


async def run(
    runtime: Runtime, participants: int, *, timeout_seconds: float, pgbench_seconds: int, bin_dir: Path
) -> dict[str, Any]:
    """Sends the cohort, waits for every outcome, then measures pgbench on the same server."""
    settings = OpsSettings()
    world = TimedWorld(
        runtime, participants, Console(stderr=True), random.Random(),
        metadata_max_age_ms=settings.kafka_metadata_max_age_ms, compression_type=settings.kafka_compression_type,
    )  # fmt: skip
    _warn_if_underfunded(world, await read_ledger(runtime))
    sampler = ProcessSampler(Path(runtime.state_dir))
    sampler.start()
    stopping = asyncio.Event()
    sampling = asyncio.create_task(sampler.sample(stopping))
    try:
        wall = await world.run(timeout_seconds)
    finally:
        stopping.set()
        await sampling
    cpu = sampler.cpu_seconds()
    _, breaches = summarize(world, wall, await read_ledger(runtime))
    tps = await throwaway_tps(bin_dir, runtime.database_url, PGBENCH_CLIENTS, pgbench_seconds)
    return report(world, wall, cpu, sampler.rss_bytes, tps, pgbench_seconds, breaches)


def _warn_if_underfunded(world: TimedWorld, ledger: LedgerView) -> None:
    """Says so before the run if the budget left cannot pay every eligible participant: the rest
    would be held, a lawful outcome, and the run would measure far fewer payments than it sent."""
    from services.disbursement.settings import ProgramSettings

    eligible = sum(1 for participant in world.cohort if participant.expected == "accepted")
    amount = ProgramSettings().program_amount
    if ledger.budget_left is not None and ledger.budget_left < eligible * amount:
        world.console.print(
            f"[yellow]the budget left ({ledger.budget_left:,.2f}) pays {int(ledger.budget_left // amount):,} "
            f"of {eligible:,} eligible participants; the rest will be held. Start `homeward up` with "
            f"HOMEWARD_PROGRAM_BUDGET of at least {eligible * amount:.2f}, or top it up with "
            f"`homeward ledger fund`.[/yellow]"
        )


def report(
    world: TimedWorld,
    wall_seconds: float,
    cpu: dict[str, float],
    rss: dict[str, list[int]],
    pgbench_tps: float,
    pgbench_seconds: int,
    breaches: list[str],
) -> dict[str, Any]:
    paid = world.seen_at["disbursed"]
    first = min(world.submitted_at.values(), default=0.0)
    span = (max(paid.values()) - first) if paid else 0.0
    rate = len(paid) / span if span else 0.0
    latencies = world.latencies()
    return {
        "participants": len(world.cohort),
        "paid": len(paid),
        "held": len(world.tally.held),
        "wall_seconds": round(wall_seconds, 2),
        "cases_per_second": round(rate, 1),
        "latency_seconds": {
            stage: {f"p{rank}": _rounded(percentile(values, rank)) for rank in PERCENTILES}
            for stage, values in latencies.items()
        },
        "cpu_seconds": cpu,
        "cpu_ms_per_case": {name: round(seconds * 1000 / max(1, len(paid)), 2) for name, seconds in cpu.items()},
        "rss_mb": {name: _megabytes(values) for name, values in rss.items() if values},
        "pgbench_tps": round(pgbench_tps, 1),
        "pgbench_seconds": pgbench_seconds,
        "cases_per_pgbench_tps": round(rate / pgbench_tps, 4) if pgbench_tps else None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "breaches": breaches,
    }


def _megabytes(samples: list[int]) -> dict[str, float]:
    return {"min": round(min(samples) / 2**20, 1), "max": round(max(samples) / 2**20, 1)}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def table(result: dict[str, Any]) -> Table:
    rows = [
        ("participants (paid)", f"{result['participants']:,} ({result['paid']:,})"),
        ("wall seconds", f"{result['wall_seconds']:.1f}"),
        ("cases/s (first submission to last payment)", f"{result['cases_per_second']:,.1f}"),
        (f"pgbench -N tps ({result['pgbench_seconds']} s, same server)", f"{result['pgbench_tps']:,.1f}"),
        ("cases/s per pgbench tps", str(result["cases_per_pgbench_tps"])),
    ]
    for stage, ranks in result["latency_seconds"].items():
        text = " / ".join("-" if value is None else f"{value:.2f}" for value in ranks.values())
        rows.append((f"submitted → {stage} p50/p95/p99 s", text))
    for name, seconds in sorted(result["cpu_seconds"].items()):
        memory = result["rss_mb"].get(name, {})
        per_case = result["cpu_ms_per_case"].get(name)
        rows.append((f"{name}: CPU s (ms/case), RSS MB min-max",
                     f"{seconds:.1f} ({per_case}) {memory.get('min')}-{memory.get('max')}"))  # fmt: skip
    rows.append(("stipends held", f"{result['held']:,}"))
    rows.append(("breaches", "none" if not result["breaches"] else "; ".join(result["breaches"])))
    return measure_table("End-to-end benchmark", rows)
