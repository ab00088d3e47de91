"""``shared.inventory.service.lock_order``: the one order in which every transaction locks
several stock levels (restocks grouped into a commit, batches, transfers)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from shared.inventory.service import lock_order

skus = st.from_regex(r"[A-Z0-9]{3,8}", fullmatch=True)
codes = st.from_regex(r"[A-Z0-9]{1,6}", fullmatch=True)
levels = st.lists(st.tuples(skus, codes), min_size=1, max_size=20)


@given(levels, st.randoms(use_true_random=False))
def test_every_arrival_order_locks_in_the_same_order(
    pairs: list[tuple[str, str]], rng: object
) -> None:
    shuffled = list(pairs)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    first = sorted(pairs, key=lambda pair: lock_order(*pair))
    second = sorted(shuffled, key=lambda pair: lock_order(*pair))
    assert first == second


@given(levels)
def test_by_sku_then_location_code(pairs: list[tuple[str, str]]) -> None:
    ordered = sorted(pairs, key=lambda pair: lock_order(*pair))
    assert [sku for sku, _ in ordered] == sorted(sku for sku, _ in pairs)
    for (sku_a, code_a), (sku_b, code_b) in itertools.pairwise(ordered):
        assert sku_a < sku_b or (sku_a == sku_b and code_a <= code_b)


def test_two_transfers_in_opposite_directions_lock_alike() -> None:
    there = sorted([("BOLT-M8", "MAIN"), ("BOLT-M8", "DOCK-2")], key=lambda p: lock_order(*p))
    back = sorted([("BOLT-M8", "DOCK-2"), ("BOLT-M8", "MAIN")], key=lambda p: lock_order(*p))
    assert there == back == [("BOLT-M8", "DOCK-2"), ("BOLT-M8", "MAIN")]
