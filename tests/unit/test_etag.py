"""``shared.catalog.schemas.parse_etag``: the ETags this API issues (``"<id>.<version>"``)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.catalog.schemas import InvalidETag, Product, parse_etag

ids = st.integers(min_value=1, max_value=2**31 - 1)


def product(product_id: int, version: int) -> Product:
    now = datetime.now(UTC)
    return Product(
        id=product_id, sku="BOLT-M8", title="Hex bolt", unit_price=Decimal("0.35"),
        category=None, reorder_point=0, description=None, on_hand=0,
        created_at=now, updated_at=now, version=version,
    )  # fmt: skip


@given(ids, ids)
def test_the_etag_a_product_carries_parses_back(product_id: int, version: int) -> None:
    assert parse_etag(product(product_id, version).etag) == (product_id, version)


@given(ids, ids)
def test_weak_and_padded_forms_match(product_id: int, version: int) -> None:
    assert parse_etag(f' W/"{product_id}.{version}" ') == (product_id, version)


@pytest.mark.parametrize(
    "value",
    ["", '"', '""', "12.3", '"12"', '"12."', '".3"', '"a.3"', '"12.3.4"', '"-1.3"', '"1.-3"',
     "'12.3'", '"12.3', 'W/12.3', "*", '"1.\u00b2"', '"\u0661.2"', '"1.2147483648"',
     '"9223372036854775808.1"', '"' + "9" * 5000 + '.1"'],
)  # fmt: skip
def test_anything_else_is_not_an_etag_of_ours(value: str) -> None:
    with pytest.raises(InvalidETag):
        parse_etag(value)


@given(ids)
def test_the_largest_version_and_id_still_parse(version: int) -> None:
    assert parse_etag(f'"{2**63 - 1}.{version}"') == (2**63 - 1, version)
