"""Inventory endpoints: locations, restocks, adjustments, transfers, levels, the ledger."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.auth import ConnDep, requires
from api.mutations import Mutation, MutationRoute, mutates
from shared.auth.keys import Scope
from shared.auth.service import Principal
from shared.inventory import service
from shared.inventory.schemas import (
    Adjustment,
    AdjustmentResult,
    BatchResult,
    InventoryView,
    Location,
    LocationCreate,
    LowStockItem,
    Movement,
    MovementFilter,
    RestockBatch,
    RestockLine,
    RestockResult,
    Transfer,
    TransferResult,
)
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from shared.types import Timestamp

router = APIRouter(route_class=MutationRoute, prefix="/inventory", tags=["inventory"])

InventoryRead = Annotated[Principal, requires(Scope.inventory_read)]
InventoryWrite = Annotated[Mutation, mutates(Scope.inventory_write)]
# restock writes in one statement, or nothing before it raises: no savepoint needed; and its
# happy path, with the key's handling, is that one statement
InventoryRestock = Annotated[
    Mutation, mutates(Scope.inventory_write, atomic=True, one_statement=service.RESTOCK)
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
CONFLICTS: dict[int | str, dict[str, Any]] = {
    409: {"description": "Archived product, insufficient stock, or duplicate"}
}


async def restock(body: RestockLine, m: InventoryRestock) -> Response:
    """Receive stock at a location (default `MAIN`). Send an `Idempotency-Key`: a retried
    request then returns the first answer and counts nothing twice."""
    return await m.respond_json(201, await service.restock(m.uow, body))


def add_restock_route(app_router: APIRouter, prefix: str) -> None:
    """The restock, the hot route, on the app's own router, ahead of every included one:
    FastAPI finds a route of an included router by walking the routers before it, a cost
    measured in docs/decisions/013-one-entrance-and-its-cost.md. An ordinary route all the
    same: every middleware wraps it, OpenAPI lists it."""
    app_router.add_api_route(
        prefix + router.prefix + "/restock",
        restock,
        methods=["POST"],
        status_code=201,
        response_model=RestockResult,
        responses=CONFLICTS,
        tags=router.tags,
        route_class_override=MutationRoute,
    )


@router.post("/locations", status_code=201, response_model=Location, responses=CONFLICTS)
async def create_location(body: LocationCreate, m: InventoryWrite) -> Response:
    location = await service.create_location(m.uow, body)
    return await m.respond(201, location)


@router.get("/locations", response_model=Page[Location])
async def list_locations(
    conn: ConnDep, _: InventoryRead, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None
) -> Page[Location]:
    return await service.list_locations(conn, limit=limit, cursor=cursor)


@router.post("/restock/batch", status_code=201, response_model=BatchResult, responses=CONFLICTS)
async def restock_batch(body: RestockBatch, m: InventoryWrite) -> Response:
    """Up to 1000 restock lines, all or none."""
    return await m.respond(201, await service.restock_batch(m.uow, body))


@router.post("/adjustments", status_code=201, response_model=AdjustmentResult, responses=CONFLICTS)
async def adjust(body: Adjustment, m: InventoryWrite) -> Response:
    """Change a level by a signed delta; a level never goes below zero (409
    `insufficient-stock`, nothing written)."""
    return await m.respond(201, await service.adjust(m.uow, body))


@router.post("/transfers", status_code=201, response_model=TransferResult, responses=CONFLICTS)
async def transfer(body: Transfer, m: InventoryWrite) -> Response:
    """Move stock between locations: both legs or neither."""
    return await m.respond(201, await service.transfer(m.uow, body))


@router.get("/movements", response_model=Page[Movement])
async def list_movements(
    conn: ConnDep,
    _: InventoryRead,
    sku: str | None = None,
    location_code: str | None = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[Movement]:
    """The ledger in id order, within `[since, until)` (timestamps with an offset)."""
    filters = MovementFilter(sku=sku, location_code=location_code, since=since, until=until)
    return await service.list_movements(conn, filters, limit=limit, cursor=cursor)


@router.get("/low-stock", response_model=Page[LowStockItem])
async def low_stock(
    conn: ConnDep, _: InventoryRead, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None
) -> Page[LowStockItem]:
    """Live products whose `on_hand` is at or below their `reorder_point`."""
    return await service.low_stock(conn, limit=limit, cursor=cursor)


@router.get("/{sku}", response_model=InventoryView)
async def inventory_of(sku: str, conn: ConnDep, _: InventoryRead) -> InventoryView:
    return await service.inventory_of(conn, sku)
