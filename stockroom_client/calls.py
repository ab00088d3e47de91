"""Every endpoint, once: a function that builds its request (a ``Call``) and says how to
read the answer. ``Client`` and ``AsyncClient`` both take their methods from here, so the
two cannot differ. A POST gets its ``Idempotency-Key`` (a UUID4 unless given) here, when the
call is built, so every retry of that call sends the same key."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from stockroom_client.models import (
    AdjustmentResult,
    AuditEntry,
    BatchResult,
    ImportMode,
    InventoryView,
    Job,
    JobStatus,
    Location,
    LowStockItem,
    Movement,
    Page,
    Product,
    QueueStats,
    Report,
    ReportFormat,
    ReportKind,
    RestockResult,
    TransferResult,
    WorkerInfo,
)

API = "/api/v1"
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    method: str
    path: str
    parse: Callable[[httpx.Response], R]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate_json(response.content)


def _nothing(response: httpx.Response) -> None:
    return None


def _query(**params: Any) -> dict[str, Any]:
    """Query parameters, the ``None`` ones left out and datetimes as RFC 3339."""
    return {
        k: v.isoformat() if isinstance(v, datetime) else v
        for k, v in params.items()
        if v is not None
    }


def _body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _post(
    path: str,
    parse: Callable[[httpx.Response], R],
    idempotency_key: str | None,
    json: Any = None,
    *,
    params: dict[str, Any] | None = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Call[R]:
    key = idempotency_key or str(uuid.uuid4())
    return Call(
        "POST",
        path,
        parse,
        params=params or {},
        json=json,
        content=content,
        headers={"Idempotency-Key": key, **(headers or {})},
    )


def _segment(value: str | uuid.UUID) -> str:
    return quote(str(value), safe="")


# --- catalog ---------------------------------------------------------------------------------


def create_product(
    sku: str,
    title: str,
    unit_price: str | Decimal,
    *,
    category: str | None = None,
    reorder_point: int | None = None,
    description: str | None = None,
    idempotency_key: str | None = None,
) -> Call[Product]:
    """``POST /catalog/products``."""
    body = _body(
        sku=sku,
        title=title,
        unit_price=str(unit_price),
        category=category,
        reorder_point=reorder_point,
        description=description,
    )
    return _post(f"{API}/catalog/products", _model(Product), idempotency_key, body)


def get_product(sku: str) -> Call[Product]:
    """``GET /catalog/products/{sku}``."""
    return Call("GET", f"{API}/catalog/products/{_segment(sku)}", _model(Product))


def list_products(
    *,
    category: str | None = None,
    q: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Product]]:
    """``GET /catalog/products`` (one page; pass ``next_cursor`` back as ``cursor``)."""
    params = _query(category=category, q=q, limit=limit, cursor=cursor)
    return Call("GET", f"{API}/catalog/products", _model(Page[Product]), params=params)


def update_product(
    sku: str, changes: Mapping[str, Any], *, if_match: str | None = None
) -> Call[Product]:
    """``PATCH /catalog/products/{sku}`` with the fields to change (``If-Match``: an ETag)."""
    headers = {"If-Match": if_match} if if_match else {}
    path = f"{API}/catalog/products/{_segment(sku)}"
    return Call("PATCH", path, _model(Product), json=dict(changes), headers=headers)


def archive_product(sku: str) -> Call[None]:
    """``DELETE /catalog/products/{sku}``: archives it (history is kept)."""
    return Call("DELETE", f"{API}/catalog/products/{_segment(sku)}", _nothing)


# --- inventory -------------------------------------------------------------------------------


def create_location(
    code: str, *, name: str | None = None, idempotency_key: str | None = None
) -> Call[Location]:
    """``POST /inventory/locations``."""
    body = _body(code=code, name=name)
    return _post(f"{API}/inventory/locations", _model(Location), idempotency_key, body)


def list_locations(*, limit: int | None = None, cursor: str | None = None) -> Call[Page[Location]]:
    """``GET /inventory/locations``."""
    params = _query(limit=limit, cursor=cursor)
    return Call("GET", f"{API}/inventory/locations", _model(Page[Location]), params=params)


def restock(
    sku: str,
    quantity: int,
    *,
    location_code: str | None = None,
    reference: str | None = None,
    note: str | None = None,
    idempotency_key: str | None = None,
) -> Call[RestockResult]:
    """``POST /inventory/restock``: the movement, the level after it, the audit job."""
    body = _body(
        sku=sku, quantity=quantity, location_code=location_code, reference=reference, note=note
    )
    return _post(f"{API}/inventory/restock", _model(RestockResult), idempotency_key, body)


def restock_batch(
    lines: Sequence[Mapping[str, Any]],
    *,
    reference: str | None = None,
    idempotency_key: str | None = None,
) -> Call[BatchResult]:
    """``POST /inventory/restock/batch``: up to 1000 lines, all or none."""
    body = _body(lines=[dict(line) for line in lines], reference=reference)
    return _post(f"{API}/inventory/restock/batch", _model(BatchResult), idempotency_key, body)


def adjust(
    sku: str,
    location_code: str,
    delta: int,
    reason: str,
    *,
    note: str | None = None,
    idempotency_key: str | None = None,
) -> Call[AdjustmentResult]:
    """``POST /inventory/adjustments`` (``InsufficientStock`` below zero)."""
    body = _body(sku=sku, location_code=location_code, delta=delta, reason=reason, note=note)
    path = f"{API}/inventory/adjustments"
    return _post(path, _model(AdjustmentResult), idempotency_key, body)


def transfer(
    sku: str,
    from_location: str,
    to_location: str,
    quantity: int,
    *,
    idempotency_key: str | None = None,
) -> Call[TransferResult]:
    """``POST /inventory/transfers``: both legs or none."""
    body = _body(sku=sku, from_location=from_location, to_location=to_location, quantity=quantity)
    return _post(f"{API}/inventory/transfers", _model(TransferResult), idempotency_key, body)


def get_inventory(sku: str) -> Call[InventoryView]:
    """``GET /inventory/{sku}``: on hand, per location."""
    return Call("GET", f"{API}/inventory/{_segment(sku)}", _model(InventoryView))


def list_movements(
    *,
    sku: str | None = None,
    location_code: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Movement]]:
    """``GET /inventory/movements``: the ledger in ``[since, until)``."""
    params = _query(
        sku=sku, location_code=location_code, since=since, until=until, limit=limit, cursor=cursor
    )
    return Call("GET", f"{API}/inventory/movements", _model(Page[Movement]), params=params)


def list_low_stock(
    *, limit: int | None = None, cursor: str | None = None
) -> Call[Page[LowStockItem]]:
    """``GET /inventory/low-stock``."""
    params = _query(limit=limit, cursor=cursor)
    return Call("GET", f"{API}/inventory/low-stock", _model(Page[LowStockItem]), params=params)


def import_csv(
    content: bytes, *, mode: ImportMode = "atomic", idempotency_key: str | None = None
) -> Call[Job]:
    """``POST /inventory/imports``: the CSV uploaded, its import job answered (``202``)."""
    return _post(
        f"{API}/inventory/imports",
        _model(Job),
        idempotency_key,
        params={"mode": mode},
        content=content,
        headers={"Content-Type": "text/csv"},
    )


# --- jobs, audit, reports, ops ---------------------------------------------------------------


def get_job(job_id: str | uuid.UUID) -> Call[Job]:
    """``GET /jobs/{id}``."""
    return Call("GET", f"{API}/jobs/{_segment(job_id)}", _model(Job))


def list_jobs(
    *,
    status: JobStatus | None = None,
    kind: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Job]]:
    """``GET /jobs`` (``status="failed"``: the dead-letter view)."""
    params = _query(status=status, kind=kind, limit=limit, cursor=cursor)
    return Call("GET", f"{API}/jobs", _model(Page[Job]), params=params)


def cancel_job(job_id: str | uuid.UUID, *, idempotency_key: str | None = None) -> Call[Job]:
    """``POST /jobs/{id}/cancel``."""
    return _post(f"{API}/jobs/{_segment(job_id)}/cancel", _model(Job), idempotency_key)


def retry_job(job_id: str | uuid.UUID, *, idempotency_key: str | None = None) -> Call[Job]:
    """``POST /jobs/{id}/retry``: a new job, ``retry_of`` this one."""
    return _post(f"{API}/jobs/{_segment(job_id)}/retry", _model(Job), idempotency_key)


def list_audit(
    *,
    action: str | None = None,
    sku: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[AuditEntry]]:
    """``GET /audit``, newest first."""
    params = _query(action=action, sku=sku, since=since, until=until, limit=limit, cursor=cursor)
    return Call("GET", f"{API}/audit", _model(Page[AuditEntry]), params=params)


def request_report(
    kind: ReportKind,
    format: ReportFormat,
    params: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
) -> Call[Job]:
    """``POST /reports``: the report's job (whose id is the report's)."""
    body = {"kind": kind, "format": format, "params": dict(params or {})}
    return _post(f"{API}/reports", _model(Job), idempotency_key, body)


def get_report(report_id: str | uuid.UUID) -> Call[Report]:
    """``GET /reports/{id}``: the metadata."""
    return Call("GET", f"{API}/reports/{_segment(report_id)}", _model(Report))


def queue_stats() -> Call[QueueStats]:
    """``GET /ops/queue`` (``admin``)."""
    return Call("GET", f"{API}/ops/queue", _model(QueueStats))


_WORKERS = TypeAdapter(list[WorkerInfo])


def list_workers() -> Call[list[WorkerInfo]]:
    """``GET /ops/workers`` (``admin``)."""
    return Call("GET", f"{API}/ops/workers", lambda r: _WORKERS.validate_json(r.content))
