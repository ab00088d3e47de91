"""``shared.idempotency.fingerprint``: what makes two requests under one Idempotency-Key the
same request."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.idempotency import NOT_JSON, RequestBody, fingerprint

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


@given(bodies, st.randoms(use_true_random=False))
def test_key_order_and_white_space_do_not_matter(body: dict[str, Any], rng: Any) -> None:
    items = list(body.items())
    rng.shuffle(items)
    compact = json.dumps(body, separators=(",", ":")).encode()
    spaced = json.dumps(dict(items), indent=2).encode()
    assert fingerprint("POST", "/api/v1/x", compact) == fingerprint("POST", "/api/v1/x", spaced)


@given(bodies, bodies)
def test_bodies_that_differ_as_json_differ(first: dict[str, Any], second: dict[str, Any]) -> None:
    same_json = json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    first_print = fingerprint("POST", "/p", json.dumps(first).encode())
    assert (first_print == fingerprint("POST", "/p", json.dumps(second).encode())) == same_json


def test_method_and_path_count() -> None:
    body = b'{"sku":"A-1","quantity":1}'
    reference = fingerprint("POST", "/api/v1/inventory/restock", body)
    assert fingerprint("PUT", "/api/v1/inventory/restock", body) != reference
    assert fingerprint("POST", "/api/v1/inventory/restock/batch", body) != reference


def test_parts_cannot_run_into_each_other() -> None:
    assert fingerprint("POST", "/ab", b"c") != fingerprint("POST", "/a", b"bc")
    assert fingerprint("POS", "T/a", b"") != fingerprint("POST", "/a", b"")


def test_a_body_that_is_not_json_counts_byte_for_byte() -> None:
    assert fingerprint("POST", "/p", b"sku,quantity\nA,1\n") == fingerprint(
        "POST", "/p", b"sku,quantity\nA,1\n"
    )
    assert fingerprint("POST", "/p", b"not json ") != fingerprint("POST", "/p", b"not json")
    deep = b"[" * 100_000 + b"]" * 100_000  # too deep to canonicalise: still a fingerprint
    assert fingerprint("POST", "/p", deep) == fingerprint("POST", "/p", deep)


def test_numbers_keep_their_spelling() -> None:
    # 1 and 1.0 are different JSON to a validator that takes integers only
    assert fingerprint("POST", "/p", b'{"q":1}') != fingerprint("POST", "/p", b'{"q":1.0}')


@given(bodies | st.binary(max_size=40))
def test_a_decoded_body_fingerprints_as_its_bytes(body: dict[str, Any] | bytes) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    decoded = RequestBody(raw)
    decoded.json()  # decoded before, as the one-statement restock's validation does
    assert fingerprint("POST", "/p", decoded) == fingerprint("POST", "/p", raw)


def test_a_body_is_json_or_not_json() -> None:
    assert RequestBody(b"null").json() is None
    assert RequestBody(b'{"a": [1]}').json() == {"a": [1]}
    assert RequestBody(b"{").json() is NOT_JSON
    assert RequestBody(b"\xff").json() is NOT_JSON
    assert RequestBody(b"[" * 100_000).json() is NOT_JSON
