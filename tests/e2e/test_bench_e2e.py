"""`homeward bench e2e` against the session's `homeward up`: a small cohort, timed, with pgbench
on the same server, written as JSON an operator (or a later comparison) can read."""

import asyncio
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Running
from tests.support import homeward_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PARTICIPANTS = 15
RATE = 30
BENCH_SECONDS_MAX = 240.0
POLL_SECONDS = 0.2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def test_a_small_cohort_is_timed_stage_by_stage(homeward: Running, tmp_path: Path):
    report_file, plot_file = tmp_path / "e2e.json", tmp_path / "e2e.png"
    result = await asyncio.to_thread(
        homeward_cli, "bench", "e2e", "--participants", str(PARTICIPANTS), "--state-dir", str(homeward.state_dir),
        "--json", str(report_file), "--pgbench-seconds", "1", "--rate", str(RATE), "--plot", str(plot_file),
        timeout_seconds=BENCH_SECONDS_MAX,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(report_file.read_text())
    assert report["participants"] == PARTICIPANTS
    assert report["paid"] == PARTICIPANTS  # a cohort under 20 has no ineligible people
    assert report["breaches"] == []
    assert report["held"] == 0
    assert report["cases_per_second"] > 0 and report["pgbench_tps"] > 0
    latency = report["latency_seconds"]
    # The world reads each topic on its own, so a booking may be seen a poll before its acceptance.
    assert (
        latency["accepted"]["p50"]
        <= latency["booked"]["p50"] + POLL_SECONDS
        <= latency["disbursed"]["p50"] + POLL_SECONDS
    )
    assert {"registration", "travel", "arrival", "disbursement", "postgres", "world"} <= set(report["cpu_seconds"])
    assert all(memory["max"] > 0 for memory in report["memory_mb"].values())
    assert report["rate_requested"] == RATE and report["replicas"] == 1
    # At 30 a second, 15 registrations go out over about half a second, not at once.
    assert sum(second["submitted"] for second in report["timeline"]) == PARTICIPANTS
    assert sum(second["paid"] for second in report["timeline"]) == PARTICIPANTS
    assert plot_file.read_bytes().startswith(PNG_SIGNATURE)
