"""Catalog endpoints: products."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from api.auth import ConnDep, requires
from api.mutations import Mutation, MutationRoute, mutates
from shared.auth.keys import Scope
from shared.auth.service import Principal
from shared.catalog import service
from shared.catalog.schemas import Product, ProductCreate, ProductPatch
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from shared.urls import product_path

router = APIRouter(route_class=MutationRoute, prefix="/catalog", tags=["catalog"])

CatalogRead = Annotated[Principal, requires(Scope.catalog_read)]
CatalogWrite = Annotated[Mutation, mutates(Scope.catalog_write)]
IfMatch = Annotated[
    str | None, Header(alias="If-Match", description="The ETag you read; stale → 412.")
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


@router.post(
    "/products",
    status_code=201,
    response_model=Product,
    responses={409: {"description": "Duplicate SKU"}},
)
async def create_product(body: ProductCreate, m: CatalogWrite) -> Response:
    """Create a product. Returns it with its `Location` and `ETag`."""
    product = await service.create_product(m.uow, body)
    return await m.respond(
        201,
        product,
        {"Location": product_path(product.sku), "ETag": product.etag},
    )


@router.get("/products", response_model=Page[Product])
async def list_products(
    conn: ConnDep,
    _: CatalogRead,
    category: str | None = None,
    q: Annotated[str | None, Query(max_length=100, description="Substring of SKU or title")] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[Product]:
    """Live products in SKU order, keyset-paginated; `q` matches SKU or title, case-insensitive,
    `%` and `_` literal."""
    return await service.list_products(conn, category=category, q=q, limit=limit, cursor=cursor)


@router.get("/products/{sku}", response_model=Product)
async def get_product(sku: str, conn: ConnDep, _: CatalogRead, response: Response) -> Product:
    product = await service.get_product(conn, sku)
    response.headers["ETag"] = product.etag
    return product


@router.patch("/products/{sku}", response_model=Product)
async def update_product(
    sku: str, body: ProductPatch, m: CatalogWrite, if_match: IfMatch = None
) -> Response:
    """Change some fields. With `If-Match`, a stale ETag gets 412 and nothing changes."""
    product = await service.update_product(m.uow, sku, body, if_match)
    return await m.respond(200, product, {"ETag": product.etag})


@router.delete("/products/{sku}", status_code=204)
async def archive_product(sku: str, m: CatalogWrite, if_match: IfMatch = None) -> Response:
    """Archive a product: its history stays; it leaves reads and lists, and stock operations on
    it get 409."""
    await service.archive_product(m.uow, sku, if_match)
    return await m.respond(204, None)
