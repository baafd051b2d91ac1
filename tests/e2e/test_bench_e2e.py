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
BENCH_SECONDS_MAX = 240.0


async def test_a_small_cohort_is_timed_stage_by_stage(homeward: Running, tmp_path: Path):
    report_file = tmp_path / "e2e.json"
    result = await asyncio.to_thread(
        homeward_cli, "bench", "e2e", "--participants", str(PARTICIPANTS), "--state-dir", str(homeward.state_dir),
        "--json", str(report_file), "--pgbench-seconds", "1", timeout_seconds=BENCH_SECONDS_MAX,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(report_file.read_text())
    assert report["participants"] == PARTICIPANTS
    assert report["paid"] == PARTICIPANTS  # a cohort under 20 has no ineligible people
    assert report["breaches"] == []
    assert report["held"] == 0
    assert report["cases_per_second"] > 0 and report["pgbench_tps"] > 0
    latency = report["latency_seconds"]
    assert latency["accepted"]["p50"] <= latency["booked"]["p50"] <= latency["disbursed"]["p50"]
    assert {"registration", "travel", "arrival", "disbursement", "postgres"} <= set(report["cpu_seconds"])
    assert all(memory["max"] > 0 for memory in report["rss_mb"].values())
