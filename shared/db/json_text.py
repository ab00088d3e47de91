"""SQL expressions that render a response's JSON text in the database, byte for byte as the
API's Pydantic models serialise it (compact separators, fields in model order, strings
escaped as JSON, UUIDs as strings, timestamps as ``2026-01-02T03:04:05.123456Z`` with the
fraction left out when it is zero). For a statement that must store its own answer (see
``shared.idempotency.one_statement_mutation``); ``tests/test_json_text.py`` holds the two
side by side.

Each function takes SQL expressions and returns one; NULL renders as ``null``."""

from __future__ import annotations

import json


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def constant(value: object) -> str:
    """A value known when the statement is written."""
    return _literal(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def string(expr: str) -> str:
    return f"coalesce(to_json(({expr})::text)::text, 'null')"


def number(expr: str) -> str:
    return f"coalesce(({expr})::text, 'null')"


def uuid(expr: str) -> str:
    return f"""coalesce('"' || ({expr})::text || '"', 'null')"""


def timestamp(expr: str) -> str:
    utc = f"(({expr}) AT TIME ZONE 'UTC')"
    return (
        # the colons as quoted text: pgbench (bench/restock.py) would take ":MI" for a variable
        f"""coalesce('"' || to_char({utc}, 'YYYY-MM-DD"T"HH24":"MI":"SS')"""
        f" || CASE WHEN date_trunc('second', {utc}) = {utc} THEN ''"
        f" ELSE to_char({utc}, '.US') END || 'Z\"', 'null')"
    )


def obj(*fields: tuple[str, str]) -> str:
    """An object of ``(name, expression)`` pairs, in that order."""
    parts = []
    for i, (name, expr) in enumerate(fields):
        parts.append(_literal(("{" if i == 0 else ",") + json.dumps(name) + ":"))
        parts.append(expr)
    parts.append(_literal("}") if fields else _literal("{}"))
    return "(" + " || ".join(parts) + ")"
