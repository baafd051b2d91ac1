"""The end-to-end tier runs the whole system the way a user does: `homeward up`, then events
through the public contract only."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.devstack.embedded import free_port
from tests.support import clean_env, register_test_signers_now

UP_READY_SECONDS_MAX = 180.0
UP_STOP_SECONDS_MAX = 60.0
METRICS_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Running:
    kafka: str
    state_dir: Path
    ready_line: str

    def metrics(self, process: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """One process's Prometheus samples, read from its `/metrics` as a scraper would."""
        processes = json.loads((self.state_dir / "status.json").read_text())["processes"]
        (url,) = [found["health_url"] for found in processes if found["name"] == process]
        text = httpx.get(f"{url}/metrics", timeout=METRICS_TIMEOUT_SECONDS).raise_for_status().text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def log_lines(self) -> list[str]:
        lines = []
        for path in sorted((self.state_dir / "logs").glob("*.log")):
            lines.extend(path.read_text(errors="replace").splitlines())
        return lines


@contextlib.contextmanager
def homeward_up(
    state_dir: Path,
    stop_seconds_max: float = UP_STOP_SECONDS_MAX,
    log_level: str | None = None,
    env_extra: dict[str, str] | None = None,
) -> Iterator[Running]:
    """A `homeward up` (3 partitions a topic) until the block ends. It runs in its own process group,
    so that everything it started can be stopped even when it cannot stop itself. `env_extra` adds
    variables every process it starts sees (OTEL_*, say)."""
    env = clean_env() | (env_extra or {})
    if log_level is not None:
        env["HOMEWARD_LOG_LEVEL"] = log_level
    process = subprocess.Popen(
        [sys.executable, "-m", "services.ops.cli", "up", "--state-dir", str(state_dir),
         "--kafka-port", str(free_port()), "--partitions", "3"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    ready: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("homeward ready"):
                ready.append(line.strip())
                seen.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not seen.wait(UP_READY_SECONDS_MAX):
            raise RuntimeError(f"`homeward up` printed no ready line; logs in {state_dir / 'logs'}")
        kafka = ready[0].split("kafka=", 1)[1].split()[0]
        # Evidence must be signed (contract v1.1): the tests' producers sign with the test signers.
        # The ready line masks the database password; runtime.json (the owner's only) has the URL.
        runtime = json.loads((state_dir / "runtime.json").read_text())
        register_test_signers_now(runtime["database_url"])
        yield Running(kafka, state_dir, ready[0])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(stop_seconds_max)
        except subprocess.TimeoutExpired:
            # `up` could not stop its children: end the whole group it started.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def homeward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    # DEBUG: the per-event lines too, so that the log checks (no personal data) read every line.
    with homeward_up(tmp_path_factory.mktemp("homeward-up"), log_level="DEBUG") as running:
        yield running
