"""The chaos harness, small: a cohort flows while processes are SIGKILLed, the database restarts and
the broker is wiped; everyone owed a stipend is paid exactly once and the ledger stays sound."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import clean_env

COHORT_SECONDS_MAX = 400
CHAOS_SECONDS_MAX = COHORT_SECONDS_MAX + 200  # plus starting `up`, judging and stopping everything
STOP_SECONDS_MAX = 30
UP_READY_SECONDS_MAX = 180
# `up` stops four services (each within its shutdown bound), the sandbox, the broker and PostgreSQL.
STOP_AFTER_SIGTERM_SECONDS_MAX = 90

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(CHAOS_SECONDS_MAX + 2 * STOP_SECONDS_MAX)]


@contextlib.contextmanager
def chaos(arguments: list[str], **output: Any) -> Iterator[subprocess.Popen[str]]:
    """`homeward chaos` in its own process group; whatever is left of the group when the block ends
    is killed (a normal exit has stopped everything already: this only catches a leak)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.ops.cli", "chaos", *arguments],
        env=clean_env(COLUMNS="200"), text=True, start_new_session=True, **output,
    )  # fmt: skip
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def run_chaos(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    """Runs `homeward chaos`. If it overruns, SIGTERM asks it to stop its `up` (services, broker,
    database); whatever is left of its group is then killed, so that no process outlives the test."""
    with chaos(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        try:
            stdout, stderr = process.communicate(timeout=CHAOS_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            try:
                stdout, stderr = process.communicate(timeout=STOP_SECONDS_MAX)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stdout, stderr = process.communicate()
            pytest.fail(f"`homeward chaos` overran {CHAOS_SECONDS_MAX} s:\n{stdout[-4000:]}\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_a_small_cohort_survives_kills_a_database_restart_and_a_broker_wipe(tmp_path: Path) -> None:
    run = run_chaos(["--participants", "300", "--kill-every", "4", "--timeout-seconds", str(COHORT_SECONDS_MAX),
                     "--state-dir", str(tmp_path / "chaos")])  # fmt: skip
    assert_paid_exactly_once(run)


def test_two_replicas_of_each_service_pay_everyone_once_while_replicas_are_killed(tmp_path: Path) -> None:
    """Scale-out: two processes of each service share its consumer group, its outbox relay and its
    workers; SIGKILLs fall on either replica (and the drills still run)."""
    run = run_chaos(["--participants", "300", "--kill-every", "3", "--replicas", "2",
                     "--timeout-seconds", str(COHORT_SECONDS_MAX), "--state-dir", str(tmp_path / "chaos")])  # fmt: skip
    rows = assert_paid_exactly_once(run)
    assert re.search(r"(registration|travel|arrival|disbursement)-[12] ", rows["kills by process"]), rows


def assert_paid_exactly_once(run: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The run's table says everyone owed was paid once, nothing is stuck, and the drills ran."""
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    rows: dict[str, str] = {}
    for line in run.stdout.splitlines():
        if line.startswith("│") and len(cells := line.strip("│").split("│")) == 2:
            measure, value = cells[0].strip(), cells[1].strip()
            if measure:
                rows[measure] = value
            elif rows:  # a value the table wrapped onto the next line
                last = list(rows)[-1]
                rows[last] += " " + value
    assert rows["identities paid twice"] == "0" and rows["payments stuck"] == "0"
    assert rows["paid"] == rows["owed a stipend"] and int(rows["paid"]) > 0
    assert int(rows["processes killed"]) >= 2
    assert rows["database restarts"] == "1" and rows["broker wipes"] == "1"
    assert rows["ledger verify and reconcile"] == "clean"
    return rows


def test_sigterm_stops_the_run_and_everything_it_started(tmp_path: Path) -> None:
    state_dir = tmp_path / "chaos"
    arguments = ["--participants", "100000", "--kill-every", "60", "--state-dir", str(state_dir)]
    with chaos(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        runtime = wait_for_file(state_dir / "runtime.json", UP_READY_SECONDS_MAX)
        processes = json.loads((state_dir / "status.json").read_text())["processes"]
        started = [runtime["pid"], *(p["pid"] for p in processes)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_AFTER_SIGTERM_SECONDS_MAX) == 128 + signal.SIGTERM
        assert [pid for pid in started if alive(pid)] == [], "processes left running after SIGTERM"


def wait_for_file(path: Path, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {seconds:.0f} s"
        time.sleep(0.2)
    return json.loads(path.read_text())


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its parent does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
