"""Catalog services: products. All SQL for products lives here."""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.sql import Select

from shared.audit.events import record_event
from shared.catalog.schemas import Product, ProductCreate, ProductPatch, parse_etag
from shared.db.connection import Connection
from shared.db.database import compile_query
from shared.db.models import Product as ProductRow
from shared.db.models import StockLevel
from shared.db.unit_of_work import UnitOfWork
from shared.errors import DuplicateSku, NotFound, PreconditionFailed
from shared.pagination import Page, decode_cursor, encode_cursor

_ON_HAND = (
    "COALESCE((SELECT sum(s.quantity) FROM stock_levels s WHERE s.product_id = p.id), 0)::bigint"
    " AS on_hand"
)
_COLUMNS = (
    "p.id, p.sku, p.title, p.unit_price, p.category, p.reorder_point, p.description,"
    f" p.created_at, p.updated_at, p.version, {_ON_HAND}"
)
_PATCHABLE = ("title", "unit_price", "category", "reorder_point", "description")


def _product(row: asyncpg.Record) -> Product:
    return Product.model_validate(dict(row))


async def create_product(uow: UnitOfWork, data: ProductCreate) -> Product:
    row = await uow.conn.fetchrow(
        f"""
        INSERT INTO products AS p (sku, title, unit_price, category, reorder_point, description)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (sku) DO NOTHING
        RETURNING {_COLUMNS}
        """,  # noqa: S608
        data.sku,
        data.title,
        data.unit_price,
        data.category,
        data.reorder_point,
        data.description,
    )
    if row is None:
        archived = await uow.conn.fetchval(
            "SELECT archived_at IS NOT NULL FROM products WHERE sku = $1", data.sku
        )
        detail = f"a product with SKU {data.sku} already exists"
        if archived:
            detail += " (archived; SKUs are never reused, so history stays unambiguous)"
        raise DuplicateSku(detail)
    product = _product(row)
    await record_event(
        uow,
        "product.created",
        f"product:{product.sku}",
        [product.sku],
        data.model_dump(mode="json"),
    )
    return product


async def get_product(conn: Connection, sku: str) -> Product:
    sql = f"SELECT {_COLUMNS} FROM products p WHERE p.sku = $1 AND p.archived_at IS NULL"  # noqa: S608
    row = await conn.fetchrow(sql, sku)
    if row is None:
        raise NotFound(f"no product with SKU {sku}")
    return _product(row)


def _check_if_match(if_match: str | None, product_id: int | None) -> int | None:
    """The version an ``If-Match`` header demands (``None``: any); 412 when it cannot match."""
    if if_match is None or if_match.strip() == "*":
        return None
    parsed = parse_etag(if_match)
    if product_id is not None and parsed[0] != product_id:
        raise PreconditionFailed("If-Match does not match the product's current ETag")
    return parsed[1]


async def _current_id(conn: Connection, sku: str) -> int:
    product_id: int | None = await conn.fetchval(
        "SELECT id FROM products WHERE sku = $1 AND archived_at IS NULL", sku
    )
    if product_id is None:
        raise NotFound(f"no product with SKU {sku}")
    return product_id


async def update_product(
    uow: UnitOfWork, sku: str, patch: ProductPatch, if_match: str | None
) -> Product:
    product_id = await _current_id(uow.conn, sku)
    expected_version = _check_if_match(if_match, product_id)
    changes = {name: getattr(patch, name) for name in _PATCHABLE if name in patch.model_fields_set}
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=3))
    row = await uow.conn.fetchrow(
        f"""
        UPDATE products AS p SET {assignments}, version = p.version + 1, updated_at = now()
        WHERE p.id = $1 AND p.archived_at IS NULL AND ($2::int IS NULL OR p.version = $2)
        RETURNING {_COLUMNS}
        """,  # noqa: S608
        product_id,
        expected_version,
        *changes.values(),
    )
    if row is None:
        # The product changed (or was archived) between the read above and this update.
        await _current_id(uow.conn, sku)
        raise PreconditionFailed("If-Match does not match the product's current ETag")
    product = _product(row)
    await record_event(
        uow,
        "product.updated",
        f"product:{sku}",
        [sku],
        {
            "changes": patch.model_dump(mode="json", include=set(changes)),
            "version": product.version,
        },
    )
    return product


async def archive_product(uow: UnitOfWork, sku: str, if_match: str | None) -> None:
    product_id = await _current_id(uow.conn, sku)
    expected_version = _check_if_match(if_match, product_id)
    archived = await uow.conn.fetchval(
        """
        UPDATE products SET archived_at = now(), updated_at = now(), version = version + 1
        WHERE id = $1 AND archived_at IS NULL AND ($2::int IS NULL OR version = $2)
        RETURNING id
        """,
        product_id,
        expected_version,
    )
    if archived is None:
        await _current_id(uow.conn, sku)
        raise PreconditionFailed("If-Match does not match the product's current ETag")
    await record_event(uow, "product.archived", f"product:{sku}", [sku], {})


def _like_pattern(q: str) -> str:
    escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _list_query(category: str | None, q: str | None, after: str | None, limit: int) -> Select[Any]:
    p = ProductRow.__table__.alias("p")
    s = StockLevel.__table__.alias("s")
    on_hand = (
        select(func.coalesce(func.sum(s.c.quantity), 0))
        .where(s.c.product_id == p.c.id)
        .scalar_subquery()
        .label("on_hand")
    )
    stmt = select(
        p.c.id,
        p.c.sku,
        p.c.title,
        p.c.unit_price,
        p.c.category,
        p.c.reorder_point,
        p.c.description,
        p.c.created_at,
        p.c.updated_at,
        p.c.version,
        on_hand,
    ).where(p.c.archived_at.is_(None))
    if category is not None:
        stmt = stmt.where(p.c.category == category)
    if q:
        pattern = _like_pattern(q)
        stmt = stmt.where(
            func.lower(p.c.sku).like(pattern, escape="\\")
            | func.lower(p.c.title).like(pattern, escape="\\")
        )
    if after is not None:
        stmt = stmt.where(p.c.sku > after)
    return stmt.order_by(p.c.sku).limit(limit + 1)


async def list_products(
    conn: Connection,
    *,
    category: str | None,
    q: str | None,
    limit: int,
    cursor: str | None,
) -> Page[Product]:
    after = decode_cursor("products", cursor, (str,))[0] if cursor else None
    sql, args = compile_query(_list_query(category, q, after, limit))
    rows = await conn.fetch(sql, *args)
    items = [_product(r) for r in rows[:limit]]
    next_cursor = encode_cursor("products", [items[-1].sku]) if len(rows) > limit else None
    return Page[Product](items=items, next_cursor=next_cursor)
