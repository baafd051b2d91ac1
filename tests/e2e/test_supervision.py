"""`homeward up` supervises its processes: one killed is restarted, and the flow goes on."""

import json
import os
import signal

import pytest

from tests.e2e.test_flow import accepted_case, submit
from tests.support import Kafka, eventually, homeward_cli, outbound_and_dlq_topics, submission

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RESTART_SECONDS_MAX = 90.0


def status(homeward) -> tuple[int, dict]:
    done = homeward_cli("status", "--json", "--state-dir", str(homeward.state_dir), timeout_seconds=60)
    return done.returncode, json.loads(done.stdout)


def process(report: dict, name: str) -> dict:
    return next(entry for entry in report["processes"] if entry["name"] == name)


async def test_status_shows_every_process_healthy(homeward):
    code, report = status(homeward)
    assert code == 0, report
    names = {entry["name"] for entry in report["processes"]}
    assert {
        "registration",
        "travel",
        "arrival",
        "disbursement",
        "sandbox-payouts",
        "sandbox-travel",
        "postgres",
        "kafka",
    } <= names
    assert all(entry["health"] in ("ready", "ok", "running") for entry in report["processes"])
    services = [entry for entry in report["processes"] if entry["name"] in ("registration", "disbursement")]
    assert all(set(entry["events"]) == {"applied", "duplicate", "dead_lettered"} for entry in services)


async def test_a_killed_service_is_restarted_and_the_flow_goes_on(homeward):
    _, before = status(homeward)
    victim = process(before, "registration")
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted_and_ready() -> bool:
        code, report = status(homeward)
        entry = process(report, "registration")
        return code == 0 and entry["restarts"] == victim["restarts"] + 1 and entry["health"] == "ready"

    await eventually(restarted_and_ready, timeout=RESTART_SECONDS_MAX, what="registration to be restarted and ready")
    async with Kafka(homeward.kafka, outbound_and_dlq_topics()) as kafka:
        sent = await submit(kafka, submission())
        await accepted_case(kafka, sent["data"]["application_id"])


async def test_status_json_shows_no_password_and_rfc3339_times(homeward):
    """The database URLs a status shows are masked (the state dir's secrets stay in it)."""
    done = homeward_cli("status", "--json", "--state-dir", str(homeward.state_dir), timeout_seconds=60)
    secrets = json.loads((homeward.state_dir / "secrets.json").read_text())
    for name, value in secrets.items():
        assert str(value) not in done.stdout, f"{name} shown by status --json"
    report = json.loads(done.stdout)
    assert report["runtime"]["database_url"].count(":***@") == 1
    started = [entry["started_at"] for entry in report["processes"] if entry.get("started_at")]
    assert started and all(moment.endswith("Z") and "T" in moment for moment in started)
    assert all(isinstance(entry["uptime_ms"], int) for entry in report["processes"] if entry.get("started_at"))


async def test_status_fits_80_columns(homeward):
    done = homeward_cli("status", "--state-dir", str(homeward.state_dir), timeout_seconds=60)
    assert done.returncode == 0, done.stderr
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
