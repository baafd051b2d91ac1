"""Travel rules: when to try a booking again, and when to give up."""

import random


def retry_delay_seconds(attempts_made: int, *, base_ms: int, max_ms: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter: a random delay up to base * 2^attempts, capped."""
    ceiling_ms = min(max_ms, base_ms * 2 ** max(0, attempts_made - 1))
    return rng.uniform(ceiling_ms / 2, ceiling_ms) / 1000


def gives_up(attempts_made: int, *, attempts_max: int) -> bool:
    return attempts_made >= attempts_max
