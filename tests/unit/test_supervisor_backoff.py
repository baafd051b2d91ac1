"""`homeward up` backs a service off only while it fails on its own before it is ready: a process
killed from outside, or one that became ready, comes back at once."""

import signal

import pytest

from services.devstack.running import process_name, service_of
from services.devstack.supervisor import CRASH_LOOP_SECONDS, crashed_on_its_own

SOON = CRASH_LOOP_SECONDS / 10


@pytest.mark.parametrize(
    ("returncode", "became_ready", "lived_seconds", "crash"),
    [
        (1, False, SOON, True),  # exits with an error right after starting: a crash loop
        (-signal.SIGKILL, False, SOON, False),  # killed by a drill before it was ready
        (-signal.SIGTERM, False, SOON, False),
        (1, True, SOON, False),  # it was ready (consuming) before it died
        (1, False, CRASH_LOOP_SECONDS * 2, False),  # it ran a while
    ],
    ids=["own-error", "sigkill", "sigterm", "was-ready", "ran-a-while"],
)
def test_only_an_own_failure_before_ready_counts_toward_a_crash_loop(
    returncode: int, became_ready: bool, lived_seconds: float, crash: bool
) -> None:
    assert crashed_on_its_own(returncode, became_ready=became_ready, lived_seconds=lived_seconds) is crash


def test_replicas_are_named_after_their_service() -> None:
    assert process_name("travel", 1, 1) == "travel"
    assert [process_name("travel", replica, 2) for replica in (1, 2)] == ["travel-1", "travel-2"]
    assert [service_of(name) for name in ("travel", "travel-2", "sandbox-payouts", "disbursement-10")] == [
        "travel", "travel", "sandbox-payouts", "disbursement",
    ]  # fmt: skip
