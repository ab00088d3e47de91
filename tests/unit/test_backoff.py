"""``shared.jobs.service.backoff_seconds``: full jitter under an exponential ceiling."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from shared.jobs.service import BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS, backoff_seconds


def ceiling(attempt: int) -> float:
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1))


@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0))
def test_within_a_tenth_of_the_ceiling_and_the_ceiling(attempt: int, seed: int) -> None:
    delay = backoff_seconds(attempt, random.Random(seed))
    assert ceiling(attempt) / 10 <= delay <= ceiling(attempt)


def test_the_ceiling_doubles_from_one_second_up_to_five_minutes() -> None:
    assert [ceiling(a) for a in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    highest = max(backoff_seconds(40, random.Random(seed)) for seed in range(200))
    assert 250 < highest <= BACKOFF_CAP_SECONDS == 300


def test_delays_are_spread_not_fixed() -> None:
    rng = random.Random(7)
    delays = {round(backoff_seconds(6, rng), 3) for _ in range(50)}
    assert len(delays) > 40
    assert min(delays) < 12 and max(delays) > 20  # over [3.2, 32]
