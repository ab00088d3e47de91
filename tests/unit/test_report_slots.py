"""``shared.reports.generate.report_slots_for``: how many reports a worker runs at a time."""

from __future__ import annotations

import pytest

from shared.reports.generate import (
    CONNECTIONS_PER_REPORT,
    MAX_REPORTS_PER_WORKER,
    report_slots_for,
)


@pytest.mark.parametrize(
    ("pool_size", "slots"), [(1, 1), (4, 1), (7, 1), (8, 2), (10, 2), (500, 2)]
)
def test_as_many_as_the_pool_serves_at_four_connections_each_at_most_two(
    pool_size: int, slots: int
) -> None:
    assert report_slots_for(pool_size) == slots
    assert (CONNECTIONS_PER_REPORT, MAX_REPORTS_PER_WORKER) == (4, 2)
