"""``shared.pagination``: opaque keyset cursors, tied to their list."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.pagination import InvalidCursor, decode_cursor, encode_cursor

# text PostgreSQL can store: no NUL, no lone surrogate (a cursor carrying either is refused)
storable = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=32
)
keys = st.tuples(storable, st.integers(min_value=-(2**63), max_value=2**63 - 1))


@given(keys)
def test_a_cursor_gives_back_its_key(key: tuple[str, int]) -> None:
    cursor = encode_cursor("products", list(key))
    assert decode_cursor("products", cursor, (str, int)) == list(key)


@given(keys)
def test_a_cursor_is_url_safe_without_padding(key: tuple[str, int]) -> None:
    cursor = encode_cursor("products", list(key))
    assert cursor.isascii() and "=" not in cursor and "+" not in cursor and "/" not in cursor


def test_a_cursor_of_another_list_is_refused() -> None:
    cursor = encode_cursor("products", ["BOLT-M8", 12])
    with pytest.raises(InvalidCursor):
        decode_cursor("movements", cursor, (str, int))


@pytest.mark.parametrize(
    "key",
    [
        ["BOLT-M8"],  # too short
        ["BOLT-M8", 12, 13],  # too long
        ["BOLT-M8", "12"],  # a string for a number
        ["BOLT-M8", True],  # a boolean is not a number here
        [12, "BOLT-M8"],  # swapped
        ["BOLT\x00M8", 12],  # a NUL
        ["BOLT-\ud800", 12],  # a lone surrogate
        ["B" * 256, 12],  # longer than any key the API stores
        ["BOLT-M8", 2**63],  # past bigint
    ],
)
def test_a_key_of_the_wrong_shape_is_refused(key: list[object]) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor("products", encode_cursor("products", key), (str, int))


@pytest.mark.parametrize(
    "cursor",
    ["", "%%%", "not base64!", "é", base64.urlsafe_b64encode(b"\xff\xfe").decode(), "e30"],
)
def test_anything_this_api_did_not_issue_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor("products", cursor, (str, int))


def test_a_json_object_is_refused() -> None:
    cursor = base64.urlsafe_b64encode(json.dumps({"products": 1}).encode()).decode()
    with pytest.raises(InvalidCursor):
        decode_cursor("products", cursor, (str, int))
