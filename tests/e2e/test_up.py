"""`homeward up` as an operator starts and stops it: each step said on stderr, the ready line
alone on stdout (one line, piped), what stopped said on stop, the database on the same port
across restarts, and no half-made database left by a start that failed."""

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.devstack.embedded import free_port
from tests.support import clean_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

UP_SECONDS_MAX = 180.0


def start_and_stop(state_dir: Path) -> tuple[list[str], list[str], dict[str, object]]:
    """One `up` until it is ready, then Ctrl-C: its stdout lines, stderr lines and runtime.json."""
    command = ["up", "--state-dir", str(state_dir), "--kafka-port", str(free_port())]
    process = subprocess.Popen(
        [sys.executable, "-m", "services.ops.cli", *command],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    ready = process.stdout.readline()
    runtime = json.loads((state_dir / "runtime.json").read_text()) if ready else {}
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=UP_SECONDS_MAX)
    return [ready, *out.splitlines()], err.splitlines(), runtime


def test_up_says_each_step_and_what_stopped_and_keeps_its_database_port(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    out, err, runtime = start_and_stop(state_dir)
    assert out[0].startswith("homeward ready kafka=") and out[0].endswith("\n") and len(out) == 1
    said = [line for line in err if line.startswith("homeward up: ")]
    for step in ("providers starting", "database at", "topics ready", "migrated", "service processes started",
                 "providers answering", "every service consuming", "stopping", "stopped"):  # fmt: skip
        assert any(step in line for line in said), f"no step {step!r} in {said}"
    assert not [line for line in err if line.lstrip().startswith("{")], "no JSON log lines on the terminal"
    _, _, again = start_and_stop(state_dir)
    port = str(runtime["database_url"]).rsplit(":", 1)[1].split("/")[0]
    assert str(again["database_url"]).rsplit(":", 1)[1].split("/")[0] == port, "the database kept its port"


def test_a_start_that_fails_leaves_no_half_made_database(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        failed = subprocess.run(
            [sys.executable, "-m", "services.ops.cli", "up", "--state-dir", str(state_dir),
             "--kafka-port", str(taken.getsockname()[1])],
            env=clean_env(), capture_output=True, text=True, timeout=UP_SECONDS_MAX,
        )  # fmt: skip
    finally:
        taken.close()
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "cannot start the Kafka broker" in failed.stderr
    assert not (state_dir / "postgres").exists()
