"""Contract v1.1 withdrawal: what a request for a known case gets (services/arrival/domain.py)."""

from datetime import UTC, datetime, timedelta

import pytest

from services.arrival import domain

DEPARTURE = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("outcome", "paid", "departed", "expected"),
    [
        (None, False, False, "withdrawn"),  # open, before departure (or before any booking)
        (None, False, True, "already_departed"),
        ("withdrawn", False, True, "withdrawn"),  # withdrawn stays withdrawn, whenever asked again
        ("verified", False, False, "already_departed"),  # a verified case is never withdrawn
        ("verified", True, False, "already_paid"),
        ("rejected", False, False, "already_departed"),
    ],
)
def test_the_decision_follows_the_contract(outcome: str | None, paid: bool, departed: bool, expected: str) -> None:
    assert domain.withdrawal_decision(outcome, paid=paid, departed=departed) == expected


def test_departure_is_the_booked_flights_and_a_case_without_booking_has_not_departed() -> None:
    assert not domain.departed(None, DEPARTURE + timedelta(days=30))
    assert not domain.departed(DEPARTURE, DEPARTURE - timedelta(microseconds=1))
    assert domain.departed(DEPARTURE, DEPARTURE), "a request at the departure itself is too late"
