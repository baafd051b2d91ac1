"""Booking retries: exponential backoff with a cap and bounded jitter, and a point where travel gives up."""

import random

import pytest

from services.travel.domain import gives_up, retry_delay_seconds

BASE_MS = 200
MAX_MS = 5_000
DRAWS = 200


class _Extreme(random.Random):
    """A random source that always picks one end of the range it is given."""

    def __init__(self, *, upper: bool) -> None:
        super().__init__()
        self.upper = upper

    def uniform(self, a: float, b: float) -> float:
        return b if self.upper else a


def _delay(attempts: int, rng: random.Random) -> float:
    return retry_delay_seconds(attempts, base_ms=BASE_MS, max_ms=MAX_MS, rng=rng)


@pytest.mark.parametrize(
    ("attempts", "ceiling_seconds"),
    [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 3.2), (6, 5.0), (7, 5.0), (40, 5.0), (10_000, 5.0)],
)
def test_delay_ceiling_doubles_per_attempt_up_to_the_maximum(attempts: int, ceiling_seconds: float) -> None:
    assert _delay(attempts, _Extreme(upper=True)) == pytest.approx(ceiling_seconds)
    assert _delay(attempts, _Extreme(upper=False)) == pytest.approx(ceiling_seconds / 2)


def test_first_attempt_waits_at_most_the_base_delay() -> None:
    assert _delay(0, _Extreme(upper=True)) == pytest.approx(BASE_MS / 1000)


@pytest.mark.parametrize("attempts", [1, 3, 6, 12])
def test_jitter_stays_between_half_the_ceiling_and_the_ceiling(attempts: int) -> None:
    ceiling = min(MAX_MS, BASE_MS * 2 ** (attempts - 1)) / 1000
    rng = random.Random(attempts)

    delays = [_delay(attempts, rng) for _ in range(DRAWS)]

    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(set(delays)) > DRAWS // 2, "retries of many bookings must not fire in lockstep"


def test_delays_never_exceed_the_maximum() -> None:
    rng = random.Random(7)

    assert max(_delay(attempts, rng) for attempts in range(1, 200)) <= MAX_MS / 1000


def test_same_seed_gives_the_same_delays() -> None:
    first = [_delay(attempts, random.Random(42)) for attempts in range(1, 8)]
    again = [_delay(attempts, random.Random(42)) for attempts in range(1, 8)]

    assert first == again


@pytest.mark.parametrize(("attempts", "expected"), [(0, False), (1, False), (4, False), (5, True), (6, True)])
def test_travel_gives_up_once_attempts_reach_the_maximum(attempts: int, expected: bool) -> None:
    assert gives_up(attempts, attempts_max=5) is expected
