"""`homeward bench e2e`: a cohort through the public topics of a running `homeward up`, timed.

The world is the demo's (apps register, carriers and apps answer every booking with evidence),
with a clock on each case: when it was submitted, and when registration accepted it, travel
booked it, arrival verified it and disbursement paid it, as seen on the public topics. It reports
the sustained rate, latency percentiles per stage, CPU seconds and resident memory per process
(read from /proc; the world itself is the process `world`), and pgbench -N on the same
PostgreSQL server in the same run, for the ratio. `--plot` draws the run second by second.
"""

import asyncio
import contextlib
import json
import os
import platform
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.table import Table

from contracts.events import ArrivalVerified, RegistrationAccepted, StipendDisbursed, TravelBooked
from services.devstack.running import STATUS_FILE, Runtime, service_of
from services.ops.common import OpsSettings, measure_table
from services.ops.pgbench import throwaway_tps
from services.ops.world import Demo, LedgerView, Participant, read_ledger, summarize
from services.runtime.kafka_security import client_options

STAGES = {
    RegistrationAccepted.TOPIC: "accepted",
    TravelBooked.TOPIC: "booked",
    ArrivalVerified.TOPIC: "verified",
    StipendDisbursed.TOPIC: "disbursed",
}
PERCENTILES = (50, 95, 99)
WORLD = "world"
"""This process: the apps, carriers and partner offices the benchmark plays."""
SAMPLE_INTERVAL_SECONDS = 1.0
SAMPLES_MAX = 100_000
TIMELINE_SECONDS_MAX = 100_000
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

    def submitting(self, participants: list[Participant]) -> None:
        moment = time.time()
        for participant in participants:
            self.submitted_at.setdefault(participant.application_id, moment)

    def _observe(self, topic: str, envelope: dict[str, Any]) -> None:
        stage = STAGES.get(topic)
        if stage is not None:
            data = envelope["data"]
            self.seen_at[stage].setdefault(UUID(data["case_id"]), time.time())
            if topic == RegistrationAccepted.TOPIC and UUID(data["application_id"]) in self.by_application:
                self.application_of[UUID(data["case_id"])] = UUID(data["application_id"])
        super()._observe(topic, envelope)

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


def _proportional_bytes(pid: int, *, resident_pages: int) -> int:
    """A process's PSS; its resident size where smaps_rollup cannot be read (another user's)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    return resident_pages * PAGE_BYTES


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
    """CPU seconds and memory of each process `homeward up` supervises, by name. Memory is the
    proportional set size (PSS, from /proc/PID/smaps_rollup) summed over a process and its
    children: summed RSS would count PostgreSQL's shared buffers once for every backend that
    touched them (18 GB "resident" for a server using 1.2 GB)."""

    state_dir: Path
    cpu_start: dict[str, float] = field(default_factory=dict)
    memory_bytes: dict[str, list[int]] = field(default_factory=dict)

    def _supervised(self) -> dict[str, int]:
        try:
            processes = json.loads((self.state_dir / STATUS_FILE).read_text())["processes"]
        except (OSError, ValueError, KeyError):
            processes = []
        found = {process["name"]: process["pid"] for process in processes if process.get("pid")}
        return {**found, WORLD: os.getpid()}

    def read(self) -> dict[str, tuple[float, int]]:
        table = _process_table()
        found = {}
        for name, pid in self._supervised().items():
            # The world's children are the `up` it may have started: its own process only.
            members = [pid] if name == WORLD else list(_tree(pid, table))
            ticks = sum(table[member][1] for member in members)
            memory = sum(_proportional_bytes(member, resident_pages=table[member][2]) for member in members)
            found[name] = (ticks / CLOCK_TICKS, memory)
        return found

    def start(self) -> None:
        self.cpu_start = {name: cpu for name, (cpu, _) in self.read().items()}

    async def sample(self, stopping: asyncio.Event) -> None:
        for _ in range(SAMPLES_MAX):
            for name, (_, memory) in self.read().items():
                self.memory_bytes.setdefault(name, []).append(memory)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), SAMPLE_INTERVAL_SECONDS)
            if stopping.is_set():
                return

    def cpu_seconds(self) -> dict[str, float]:
        """CPU used since `start`; a process restarted meanwhile counts from its new start."""
        return {name: round(cpu - self.cpu_start.get(name, 0.0), 2) for name, (cpu, _) in self.read().items()}


def replicas_of(state_dir: Path) -> int:
    """How many processes of each service the `up` in `state_dir` runs (read from its status)."""
    try:
        processes = json.loads((state_dir / STATUS_FILE).read_text())["processes"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(1 for process in processes if service_of(process["name"]) == "registration")


async def run(
    runtime: Runtime,
    participants: int,
    *,
    timeout_seconds: float,
    pgbench_seconds: int,
    bin_dir: Path,
    rate: float | None = None,
) -> dict[str, Any]:
    """Sends the cohort (at once, or `rate` a second), waits for every outcome, then measures
    pgbench on the same server."""
    settings = OpsSettings()
    world = TimedWorld(
        runtime, participants, Console(stderr=True), random.Random(),
        metadata_max_age_ms=settings.kafka_metadata_max_age_ms, compression_type=settings.kafka_compression_type,
        rate=rate, kafka_options=client_options(settings),
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
    result = report(world, wall, cpu, sampler.memory_bytes, tps, pgbench_seconds, breaches)
    return {**result, "rate_requested": rate, "replicas": replicas_of(Path(runtime.state_dir))}


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
    memory: dict[str, list[int]],
    pgbench_tps: float,
    pgbench_seconds: int,
    breaches: list[str],
) -> dict[str, Any]:
    # The topics also hold earlier runs' cases: only this cohort's count.
    paid = {case: moment for case, moment in world.seen_at["disbursed"].items() if case in world.application_of}
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
        "cpu_ms_per_case_without_world": round(
            sum(seconds for name, seconds in cpu.items() if name != WORLD) * 1000 / max(1, len(paid)), 2
        ),
        "memory_mb": {name: _megabytes(values) for name, values in memory.items() if values},
        "pgbench_tps": round(pgbench_tps, 1),
        "pgbench_seconds": pgbench_seconds,
        "cases_per_pgbench_tps": round(rate / pgbench_tps, 4) if pgbench_tps else None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "breaches": breaches,
        "timeline": timeline(world),
    }


def timeline(world: TimedWorld) -> list[dict[str, Any]]:
    """Second by second from the first submission: registrations sent, stipends paid, and the
    submitted→disbursed latency of the cases paid in that second (p50, p99)."""
    if not world.submitted_at:
        return []
    first = min(world.submitted_at.values())
    sent = Counter(int(moment - first) for moment in world.submitted_at.values())
    paid: dict[int, list[float]] = {}
    for case_id, moment in world.seen_at["disbursed"].items():
        application = world.application_of.get(case_id)
        if application in world.submitted_at:
            paid.setdefault(int(moment - first), []).append(moment - world.submitted_at[application])
    seconds = max([*sent, *paid]) + 1
    return [
        {
            "second": second,
            "submitted": sent.get(second, 0),
            "paid": len(paid.get(second, [])),
            "p50_seconds": _rounded(percentile(paid.get(second, []), 50)),
            "p99_seconds": _rounded(percentile(paid.get(second, []), 99)),
        }
        for second in range(min(seconds, TIMELINE_SECONDS_MAX))
    ]


def plotting_available() -> None:
    """Stops before the run, not after it, if --plot cannot draw."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[charts]'") from error


def plot(result: dict[str, Any], path: Path) -> None:
    """Throughput and latency over time, to a PNG (matplotlib: `pip install -e '.[charts]'`)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    points = result["timeline"]
    seconds = [point["second"] for point in points]
    figure, (rates, latency) = pyplot.subplots(2, 1, sharex=True, figsize=(10, 7))
    rates.plot(seconds, [point["submitted"] for point in points], label="registrations sent /s")
    rates.plot(seconds, [point["paid"] for point in points], label="stipends paid /s")
    rates.set_ylabel("per second")
    rates.legend()
    rates.set_title(
        f"{result['participants']:,} participants, {result['cases_per_second']:,.0f} cases/s, "
        f"replicas {result.get('replicas')}, rate {result.get('rate_requested') or 'max'}"
    )
    for rank in (50, 99):
        values = [point[f"p{rank}_seconds"] for point in points]
        latency.plot(seconds, [float("nan") if value is None else value for value in values], label=f"p{rank}")
    latency.set_ylabel("submitted → disbursed, s")
    latency.set_xlabel("seconds since the first registration")
    latency.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _megabytes(samples: list[int]) -> dict[str, float | None]:
    """Least and most over the run, at a tenth of the run and at its end, and how far it moved
    after that tenth (max - min over the value then: 0.1 is ±10%)."""
    settled = samples[len(samples) // 10 :]
    at_tenth = settled[0]
    return {
        "min": round(min(samples) / 2**20, 1), "max": round(max(samples) / 2**20, 1),
        "at_10_percent": round(at_tenth / 2**20, 1), "at_end": round(samples[-1] / 2**20, 1),
        "spread_after_10_percent": round((max(settled) - min(settled)) / at_tenth, 3) if at_tenth else None,
    }  # fmt: skip


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def table(result: dict[str, Any]) -> Table:
    rows = [
        ("participants (paid)", f"{result['participants']:,} ({result['paid']:,})"),
        ("registrations/s asked, replicas", f"{result.get('rate_requested') or 'max'}, {result.get('replicas')}"),
        ("wall seconds", f"{result['wall_seconds']:.1f}"),
        ("cases/s (first submission to last payment)", f"{result['cases_per_second']:,.1f}"),
        (f"pgbench -N tps ({result['pgbench_seconds']} s, same server)", f"{result['pgbench_tps']:,.1f}"),
        ("cases/s per pgbench tps", str(result["cases_per_pgbench_tps"])),
    ]
    for stage, ranks in result["latency_seconds"].items():
        text = " / ".join("-" if value is None else f"{value:.2f}" for value in ranks.values())
        rows.append((f"submitted → {stage} p50/p95/p99 s", text))
    for name, seconds in sorted(result["cpu_seconds"].items()):
        memory = result["memory_mb"].get(name, {})
        per_case = result["cpu_ms_per_case"].get(name)
        rows.append((f"{name}: CPU s (ms/case), PSS MB min-max",
                     f"{seconds:.1f} ({per_case}) {memory.get('min')}-{memory.get('max')}"))  # fmt: skip
    rows.append(("CPU ms/case, every process but the world", str(result["cpu_ms_per_case_without_world"])))
    rows.append(("stipends held", f"{result['held']:,}"))
    rows.append(("breaches", "none" if not result["breaches"] else "; ".join(result["breaches"])))
    return measure_table("End-to-end benchmark", rows)
