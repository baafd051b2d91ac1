"""`homeward dlq republish --since`: an age or an ISO 8601 time, read the way an operator means it."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
import typer

from services.ops.dlq import since_moment

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("30m", NOW - timedelta(minutes=30)),
        ("6h", NOW - timedelta(hours=6)),
        ("2d", NOW - timedelta(days=2)),
        ("2026-11-29T10:00:00Z", datetime(2026, 11, 29, 10, 0, tzinfo=UTC)),
        ("2026-11-29T10:00", datetime(2026, 11, 29, 10, 0, tzinfo=UTC)),  # no offset: UTC
        ("2026-11-29T05:00-05:00", datetime(2026, 11, 29, 5, 0, tzinfo=timezone(timedelta(hours=-5)))),
    ],
)
def test_an_age_or_a_time_names_a_moment(since: str, expected: datetime) -> None:
    assert since_moment(since, NOW) == expected


@pytest.mark.parametrize("since", ["yesterday", "6 hours", "-2h", ""])
def test_anything_else_is_refused_with_what_to_write(since: str) -> None:
    with pytest.raises(typer.BadParameter, match="ISO 8601"):
        since_moment(since, NOW)
