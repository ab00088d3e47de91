"""Inventory services. All SQL for locations, stock levels and the ledger lives here.

Every change is a conditional, set-based statement: increments are ``INSERT … ON CONFLICT DO
UPDATE SET quantity = quantity + …``, decrements are ``UPDATE … WHERE quantity >= n`` (the
``CHECK (quantity >= 0)`` backs them up), and the ledger row is written by the same statement
through a data-modifying CTE. Nothing is read into Python and written back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import select

from shared import idempotency
from shared.alerts.low_stock import check_crossing
from shared.audit.events import AUDIT_JOB_INSERT, event_payload_sql, record_event
from shared.auth.keys import Scope
from shared.db import json_text
from shared.db.connection import Connection
from shared.db.database import compile_query
from shared.db.models import Location as LocationRow
from shared.db.models import Movement as MovementRow
from shared.db.models import Product as ProductRow
from shared.db.unit_of_work import NewJob, UnitOfWork
from shared.errors import (
    DuplicateLocation,
    InsufficientStock,
    NotFound,
    ProductArchived,
    UnprocessableReference,
)
from shared.inventory.schemas import (
    Adjustment,
    AdjustmentResult,
    BatchResult,
    InventoryView,
    JobLink,
    LevelView,
    Location,
    LocationCreate,
    LowStockItem,
    Movement,
    MovementFilter,
    RestockBatch,
    RestockLine,
    StockLevel,
    Transfer,
    TransferResult,
)
from shared.jobs.kinds import JobKind
from shared.pagination import Page, decode_cursor, encode_cursor
from shared.urls import job_path

# --- locations -------------------------------------------------------------------------------


async def create_location(uow: UnitOfWork, data: LocationCreate) -> Location:
    row = await uow.conn.fetchrow(
        "INSERT INTO locations (code, name) VALUES ($1, $2) ON CONFLICT (code) DO NOTHING"
        " RETURNING id, code, name, created_at",
        data.code,
        data.name,
    )
    if row is None:
        raise DuplicateLocation(f"a location with code {data.code} already exists")
    await record_event(
        uow, "location.created", f"location:{data.code}", [], data.model_dump(mode="json")
    )
    return Location.model_validate(dict(row))


async def list_locations(conn: Connection, *, limit: int, cursor: str | None) -> Page[Location]:
    after = decode_cursor("locations", cursor, (str,))[0] if cursor else ""
    rows = await conn.fetch(
        "SELECT id, code, name, created_at FROM locations WHERE code > $1 ORDER BY code LIMIT $2",
        after,
        limit + 1,
    )
    items = [Location.model_validate(dict(r)) for r in rows[:limit]]
    more = len(rows) > limit
    return Page[Location](
        items=items, next_cursor=encode_cursor("locations", [items[-1].code]) if more else None
    )


# --- resolving references ----------------------------------------------------------------------


Loc = list[str | int]


async def _resolve(
    conn: Connection, refs: Sequence[tuple[str, str]], fields: Sequence[tuple[Loc, Loc]]
) -> list[tuple[int, int]]:
    """``(product_id, location_id)`` for each ``(sku, location_code)``: 422 for an unknown
    SKU or location, naming the request field (``fields[i]`` holds the ``loc`` of the i-th
    reference's SKU and location code), 409 for an archived product."""
    rows = await conn.fetch(
        """
        SELECT t.ord, p.id AS product_id, p.archived_at IS NOT NULL AS archived,
               l.id AS location_id
        FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(sku, code, ord)
        LEFT JOIN products p ON p.sku = t.sku
        LEFT JOIN locations l ON l.code = t.code
        ORDER BY t.ord
        """,
        [sku for sku, _ in refs],
        [code for _, code in refs],
    )
    resolved = []
    for (sku, code), (sku_loc, code_loc), row in zip(refs, fields, rows, strict=True):
        if row["product_id"] is None:
            raise UnprocessableReference(f"unknown SKU {sku}", sku_loc)
        if row["archived"]:
            raise ProductArchived(f"product {sku} is archived; its stock cannot change")
        if row["location_id"] is None:
            raise UnprocessableReference(f"unknown location {code}", code_loc)
        resolved.append((int(row["product_id"]), int(row["location_id"])))
    return resolved


_LINE_FIELDS: tuple[Loc, Loc] = (["body", "sku"], ["body", "location_code"])


def lock_order(sku: str, location_code: str) -> tuple[str, str]:
    """The order in which every transaction that locks several stock levels locks them: by
    SKU, then location code. A request's own terms, so that restocks grouped into one commit
    (``RESTOCK``, ``shared.db.group_commit``) are put in order before their references are
    resolved; batches and transfers lock in the same order, so no two transactions ever wait
    on each other's levels in a cycle (a deadlock, which PostgreSQL breaks only after
    ``deadlock_timeout``, a second, by failing one of them)."""
    return (sku, location_code)


# --- restock -----------------------------------------------------------------------------------

# The work of a restock, as CTEs reading the caller from ``actor``: resolve, upsert the level,
# append the ledger row, write the audit event (``shared.audit.events.event_payload_sql``,
# built here, where the movement's id and the caller are known). No row when the SKU or
# location is unknown (or the product archived): nothing is written, and the general way then
# says which. $1 sku, $2 location code, $3 quantity, $4 reference, $5 note, $6 request id,
# $7 the job's max attempts.
_RESTOCK_EVENT = AUDIT_JOB_INSERT.format(
    payload=event_payload_sql(
        "inventory.restocked",
        subject="'product:' || $1::text",
        skus="jsonb_build_array($1::text)",
        payload="""jsonb_build_object(
            'sku', $1::text, 'quantity', $3::bigint, 'location_code', $2::text,
            'reference', $4::text, 'note', $5::text, 'movement_id', movement.id)""",
        key_id="actor.key_id",
        key_name="actor.key_name",
    ),
    max_attempts="$7",
    request_id="$6",
    actor_key_id="actor.key_id",
    source="movement, actor",
)
_RESTOCK_WORK = f"""
target AS (
    SELECT p.id AS product_id, l.id AS location_id
    FROM actor, products p, locations l
    WHERE p.sku = $1 AND p.archived_at IS NULL AND l.code = $2
), level AS (
    INSERT INTO stock_levels AS s (product_id, location_id, quantity, updated_at)
    SELECT product_id, location_id, $3::bigint, now() FROM target
    ON CONFLICT (product_id, location_id)
    DO UPDATE SET quantity = s.quantity + excluded.quantity, updated_at = excluded.updated_at
    RETURNING product_id, location_id, quantity, updated_at
), movement AS (
    INSERT INTO movements
        (product_id, location_id, delta, reason, reference, note, actor_key_id, request_id)
    SELECT level.product_id, level.location_id, $3::bigint, 'restock', $4::text, $5::text,
           actor.key_id, $6::text
    FROM level, actor
    RETURNING id, created_at
), event AS ({_RESTOCK_EVENT})"""  # noqa: S608
_RESTOCK_PARAMS = 7

# The answer as ``RestockResult`` serialises it, for the statement that does it all at once.
_RESTOCK_ANSWER = (
    "answer AS (SELECT {body} AS body, event.id AS job_id FROM level, movement, event)"
)
_RESTOCK_ANSWER = _RESTOCK_ANSWER.format(
    body=json_text.obj(
        (
            "movement",
            json_text.obj(
                ("id", json_text.number("movement.id")),
                ("sku", json_text.string("$1")),
                ("location_code", json_text.string("$2")),
                ("delta", json_text.number("$3")),
                ("reason", json_text.constant("restock")),
                ("reference", json_text.string("$4")),
                ("created_at", json_text.timestamp("movement.created_at")),
            ),
        ),
        (
            "stock",
            json_text.obj(
                ("sku", json_text.string("$1")),
                ("location_code", json_text.string("$2")),
                ("quantity", json_text.number("level.quantity")),
                ("updated_at", json_text.timestamp("level.updated_at")),
            ),
        ),
        (
            "audit_job",
            json_text.obj(
                ("id", json_text.uuid("event.id")),
                ("status_url", json_text.string(f"'{job_path('')}' || event.id")),
            ),
        ),
    )
)

# Inside a unit of work: the caller as parameters.
_RESTOCK = f"""
WITH actor AS (SELECT $8::uuid AS key_id, $9::text AS key_name), {_RESTOCK_WORK}, {_RESTOCK_ANSWER}
SELECT answer.body, answer.job_id FROM answer
"""  # noqa: S608


def _restock_params(
    line: RestockLine, request_id: str | None, job_max_tries: int
) -> tuple[Any, ...]:
    return (
        line.sku,
        line.location_code,
        line.quantity,
        line.reference,
        line.note,
        request_id,
        job_max_tries,
    )


RESTOCK = idempotency.one_statement_mutation(
    Scope.inventory_write,
    RestockLine,
    _RESTOCK_WORK,
    _RESTOCK_PARAMS,
    _RESTOCK_ANSWER,
    201,
    _restock_params,
    lambda line: lock_order(line.sku, line.location_code),
    JobKind.audit.value,
)
"""``POST /inventory/restock`` in one statement (``shared.idempotency.one_statement_mutation``).
"""


async def restock(uow: UnitOfWork, line: RestockLine) -> bytes:
    """Receive stock, inside a unit of work: the answer as JSON (``RestockResult``'s), rendered
    by the statement as ``RESTOCK``'s is (one rendering)."""
    row = await uow.conn.fetchrow(
        _RESTOCK,
        *_restock_params(line, uow.actor.request_id, uow.job_max_tries),
        uow.actor.key_id,
        uow.actor.key_name,
    )
    if row is None:
        await _resolve(uow.conn, [(line.sku, line.location_code)], [_LINE_FIELDS])
        raise AssertionError("restock wrote nothing for a resolvable reference")  # unreachable
    uow.new_jobs.append(NewJob(id=row["job_id"], kind=JobKind.audit.value))
    body: str = row["body"]
    return body.encode()


# Increments for many (product, location) pairs, locked in the order given (``lock_order``).
_INCREMENT_LEVELS = """
INSERT INTO stock_levels AS s (product_id, location_id, quantity, updated_at)
SELECT product_id, location_id, sum(qty), now()
FROM unnest($1::bigint[], $2::int[], $3::bigint[])
    WITH ORDINALITY AS t(product_id, location_id, qty, ord)
GROUP BY product_id, location_id
ORDER BY min(ord)
ON CONFLICT (product_id, location_id)
DO UPDATE SET quantity = s.quantity + excluded.quantity, updated_at = excluded.updated_at
RETURNING product_id, location_id, quantity, updated_at
"""

_APPEND_MOVEMENTS = """
INSERT INTO movements
    (product_id, location_id, delta, reason, reference, note, actor_key_id, request_id)
SELECT product_id, location_id, delta, reason, reference, note, $7, $8
FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::text[], $5::text[], $6::text[])
    WITH ORDINALITY AS t(product_id, location_id, delta, reason, reference, note, ord)
ORDER BY ord
RETURNING id, product_id, location_id, delta, reason, reference, created_at
"""


async def _append_movements(
    uow: UnitOfWork,
    keys: Sequence[tuple[int, int]],
    deltas: Sequence[int],
    reasons: Sequence[str],
    references: Sequence[str | None],
    notes: Sequence[str | None],
) -> list[asyncpg.Record]:
    return list(
        await uow.conn.fetch(
            _APPEND_MOVEMENTS,
            [p for p, _ in keys],
            [loc for _, loc in keys],
            list(deltas),
            list(reasons),
            list(references),
            list(notes),
            uow.actor.key_id,
            uow.actor.request_id,
        )
    )


async def restock_batch(uow: UnitOfWork, batch: RestockBatch) -> BatchResult:
    refs = [(line.sku, line.location_code) for line in batch.lines]
    fields: list[tuple[Loc, Loc]] = [
        (["body", "lines", i, "sku"], ["body", "lines", i, "location_code"])
        for i in range(len(refs))
    ]
    keys = await _resolve(uow.conn, refs, fields)
    ordered = sorted(range(len(refs)), key=lambda i: lock_order(*refs[i]))
    levels = await uow.conn.fetch(
        _INCREMENT_LEVELS,
        [keys[i][0] for i in ordered],
        [keys[i][1] for i in ordered],
        [batch.lines[i].quantity for i in ordered],
    )
    moved = await _append_movements(
        uow,
        keys,
        [line.quantity for line in batch.lines],
        ["restock"] * len(keys),
        [line.reference or batch.reference for line in batch.lines],
        [line.note for line in batch.lines],
    )
    names = {key: ref for key, ref in zip(keys, refs, strict=True)}
    skus = sorted({sku for sku, _ in refs})
    job_id = await record_event(
        uow,
        "inventory.restocked_batch",
        f"batch:{batch.reference or moved[0]['id']}",
        skus,
        {
            "reference": batch.reference,
            "lines": [line.model_dump(mode="json") for line in batch.lines],
            "movement_ids": [m["id"] for m in moved],
        },
    )
    return BatchResult(
        movements=[_movement(m, names) for m in moved],
        stock=[_level(level, names) for level in levels],
        audit_job=JobLink.for_job(job_id),
    )


def _movement(row: asyncpg.Record, names: dict[tuple[int, int], tuple[str, str]]) -> Movement:
    sku, code = names[(row["product_id"], row["location_id"])]
    return Movement(
        id=row["id"],
        sku=sku,
        location_code=code,
        delta=row["delta"],
        reason=row["reason"],
        reference=row["reference"],
        created_at=row["created_at"],
    )


def _level(row: asyncpg.Record, names: dict[tuple[int, int], tuple[str, str]]) -> StockLevel:
    sku, code = names[(row["product_id"], row["location_id"])]
    return StockLevel(
        sku=sku, location_code=code, quantity=row["quantity"], updated_at=row["updated_at"]
    )


# --- adjustments and transfers -------------------------------------------------------------

_DECREMENT_LEVEL = """
UPDATE stock_levels SET quantity = quantity - $3, updated_at = now()
WHERE product_id = $1 AND location_id = $2 AND quantity >= $3
RETURNING product_id, location_id, quantity, updated_at
"""


async def _decrement(uow: UnitOfWork, key: tuple[int, int], amount: int, what: str) -> Any:
    row = await uow.conn.fetchrow(_DECREMENT_LEVEL, key[0], key[1], amount)
    if row is None:
        available = await uow.conn.fetchval(
            "SELECT quantity FROM stock_levels WHERE product_id = $1 AND location_id = $2",
            key[0],
            key[1],
        )
        raise InsufficientStock(
            f"{what}: {available or 0} available, {amount} requested",
            available=int(available or 0),
            requested=amount,
        )
    return row


async def adjust(uow: UnitOfWork, adj: Adjustment) -> AdjustmentResult:
    ref = (adj.sku, adj.location_code)
    (key,) = await _resolve(uow.conn, [ref], [_LINE_FIELDS])
    names = {key: ref}
    if adj.delta > 0:
        level = (await uow.conn.fetch(_INCREMENT_LEVELS, [key[0]], [key[1]], [adj.delta]))[0]
    else:
        level = await _decrement(
            uow, key, -adj.delta, f"{adj.sku} at {adj.location_code} cannot go below zero"
        )
        await check_crossing(uow, key[0], adj.sku, adj.location_code, -adj.delta)
    (moved,) = await _append_movements(uow, [key], [adj.delta], [adj.reason], [None], [adj.note])
    job_id = await record_event(
        uow,
        "inventory.adjusted",
        f"product:{adj.sku}",
        [adj.sku],
        {**adj.model_dump(mode="json"), "movement_id": moved["id"]},
    )
    return AdjustmentResult(
        movement=_movement(moved, names),
        stock=_level(level, names),
        audit_job=JobLink.for_job(job_id),
    )


# Takes both levels of a transfer in ``lock_order`` (as batches do) before changing either. A
# ``SELECT … FOR UPDATE`` is not enough: it cannot lock a level that does not exist yet, and the
# later upsert of that level would then wait on a batch inserting it while the batch waits on
# the level locked here (a deadlock). So missing levels are inserted at 0 and existing ones
# locked (``DO UPDATE … WHERE false`` locks without writing), in one statement, in that order.
# A transfer that then fails rolls the placeholders back with everything else.
_LOCK_LEVELS = """
INSERT INTO stock_levels AS s (product_id, location_id, quantity, updated_at)
SELECT $1, location_id, 0, now() FROM unnest($2::int[]) WITH ORDINALITY AS t(location_id, ord)
ORDER BY ord
ON CONFLICT (product_id, location_id) DO UPDATE SET quantity = s.quantity WHERE false
"""


async def transfer(uow: UnitOfWork, t: Transfer) -> TransferResult:
    refs = [(t.sku, t.from_location), (t.sku, t.to_location)]
    source, target = await _resolve(
        uow.conn,
        refs,
        [(["body", "sku"], ["body", "from_location"]), (["body", "sku"], ["body", "to_location"])],
    )
    names = {source: refs[0], target: refs[1]}
    legs = sorted([(refs[0], source), (refs[1], target)], key=lambda leg: lock_order(*leg[0]))
    await uow.conn.execute(_LOCK_LEVELS, source[0], [key[1] for _, key in legs])
    out_level = await _decrement(
        uow, source, t.quantity, f"{t.sku} at {t.from_location} cannot go below zero"
    )
    (in_level,) = await uow.conn.fetch(_INCREMENT_LEVELS, [target[0]], [target[1]], [t.quantity])
    moved = await _append_movements(
        uow,
        [source, target],
        [-t.quantity, t.quantity],
        ["transfer_out", "transfer_in"],
        [None, None],
        [None, None],
    )
    job_id = await record_event(
        uow,
        "inventory.transferred",
        f"product:{t.sku}",
        [t.sku],
        {**t.model_dump(mode="json"), "movement_ids": [m["id"] for m in moved]},
    )
    return TransferResult(
        movements=[_movement(m, names) for m in moved],
        stock=[_level(out_level, names), _level(in_level, names)],
        audit_job=JobLink.for_job(job_id),
    )


# --- reads -------------------------------------------------------------------------------------


async def inventory_of(conn: Connection, sku: str) -> InventoryView:
    product_id = await conn.fetchval(
        "SELECT id FROM products WHERE sku = $1 AND archived_at IS NULL", sku
    )
    if product_id is None:
        raise NotFound(f"no product with SKU {sku}")
    rows = await conn.fetch(
        "SELECT l.code AS location_code, s.quantity, s.updated_at"
        " FROM stock_levels s JOIN locations l ON l.id = s.location_id"
        " WHERE s.product_id = $1 ORDER BY l.code",
        product_id,
    )
    levels = [LevelView.model_validate(dict(r)) for r in rows]
    return InventoryView(sku=sku, on_hand=sum(lv.quantity for lv in levels), levels=levels)


async def list_movements(
    conn: Connection, filters: MovementFilter, *, limit: int, cursor: str | None
) -> Page[Movement]:
    after = decode_cursor("movements", cursor, (int,))[0] if cursor else 0
    m = MovementRow.__table__.alias("m")
    p = ProductRow.__table__.alias("p")
    loc = LocationRow.__table__.alias("l")
    stmt = (
        select(
            m.c.id,
            p.c.sku,
            loc.c.code.label("location_code"),
            m.c.delta,
            m.c.reason,
            m.c.reference,
            m.c.created_at,
        )
        .select_from(m.join(p, p.c.id == m.c.product_id).join(loc, loc.c.id == m.c.location_id))
        .where(m.c.id > after)
    )
    if filters.sku is not None:
        stmt = stmt.where(p.c.sku == filters.sku)
    if filters.location_code is not None:
        stmt = stmt.where(loc.c.code == filters.location_code)
    if filters.since is not None:
        stmt = stmt.where(m.c.created_at >= filters.since)
    if filters.until is not None:
        stmt = stmt.where(m.c.created_at < filters.until)
    sql, args = compile_query(stmt.order_by(m.c.id).limit(limit + 1))
    rows = await conn.fetch(sql, *args)
    items = [Movement.model_validate(dict(r)) for r in rows[:limit]]
    more = len(rows) > limit
    return Page[Movement](
        items=items, next_cursor=encode_cursor("movements", [items[-1].id]) if more else None
    )


async def low_stock(conn: Connection, *, limit: int, cursor: str | None) -> Page[LowStockItem]:
    after = decode_cursor("low-stock", cursor, (str,))[0] if cursor else ""
    rows = await conn.fetch(
        """
        SELECT p.sku, p.title, p.category, p.reorder_point, coalesce(s.on_hand, 0) AS on_hand
        FROM products p
        LEFT JOIN LATERAL (
            SELECT sum(quantity)::bigint AS on_hand FROM stock_levels WHERE product_id = p.id
        ) s ON true
        WHERE p.archived_at IS NULL AND p.sku > $1
          AND coalesce(s.on_hand, 0) <= p.reorder_point
        ORDER BY p.sku
        LIMIT $2
        """,
        after,
        limit + 1,
    )
    items = [LowStockItem.model_validate(dict(r)) for r in rows[:limit]]
    more = len(rows) > limit
    return Page[LowStockItem](
        items=items, next_cursor=encode_cursor("low-stock", [items[-1].sku]) if more else None
    )
