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
