"""The API's answers as Pydantic models: one per schema of the OpenAPI document, same names,
same fields (``tests/client/test_models.py`` checks them against the document the app
serves, so they cannot drift). New fields the server adds are kept, not refused."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

JobStatus = Literal["queued", "in_progress", "complete", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"complete", "failed", "cancelled"})
ImportMode = Literal["atomic", "per_line"]
ReportKind = Literal["valuation", "movements", "low_stock"]
ReportFormat = Literal["csv", "json", "xlsx"]


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


T = TypeVar("T", bound=Model)


class Page(Model, Generic[T]):
    items: list[T]
    next_cursor: str | None


class Product(Model):
    id: int
    sku: str
    title: str
    unit_price: str
    category: str | None
    reorder_point: int
    description: str | None
    on_hand: int
    created_at: datetime
    updated_at: datetime
    version: int


class Location(Model):
    id: int
    code: str
    name: str | None
    created_at: datetime


class Movement(Model):
    id: int
    sku: str
    location_code: str
    delta: int
    reason: str
    reference: str | None
    created_at: datetime


class StockLevel(Model):
    sku: str
    location_code: str
    quantity: int
    updated_at: datetime


class JobLink(Model):
    id: uuid.UUID
    status_url: str


class RestockResult(Model):
    movement: Movement
    stock: StockLevel
    audit_job: JobLink


class BatchResult(Model):
    movements: list[Movement]
    stock: list[StockLevel]
    audit_job: JobLink


class AdjustmentResult(Model):
    movement: Movement
    stock: StockLevel
    audit_job: JobLink


class TransferResult(Model):
    movements: list[Movement]
    stock: list[StockLevel]
    audit_job: JobLink


class LevelView(Model):
    location_code: str
    quantity: int
    updated_at: datetime


class InventoryView(Model):
    sku: str
    on_hand: int
    levels: list[LevelView]


class LowStockItem(Model):
    sku: str
    title: str
    category: str | None
    on_hand: int
    reorder_point: int


class JobLinks(Model):
    self: str
    cancel: str | None = None
    retry: str | None = None
    retry_of: str | None = None
    report: str | None = None


class Job(Model):
    id: uuid.UUID
    kind: str
    status: JobStatus
    progress: int
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    retry_of: uuid.UUID | None
    request_id: str | None
    links: JobLinks

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class QueueStats(Model):
    queued: int
    in_progress: int
    deferred: int
    failed_last_hour: int
    oldest_queued_age_seconds: float
    redis_ready: int | None = None
    redis_deferred: int | None = None
    redis_in_progress: int | None = None


class WorkerInfo(Model):
    id: str
    host: str
    pid: int
    started_at: datetime
    last_heartbeat: datetime
    jobs_running: int
    jobs_done: int


class AuditActor(Model):
    key_id: str | None
    name: str | None


class AuditEntry(Model):
    id: int
    action: str
    actor: AuditActor
    request_id: str | None
    subject: str | None
    payload: dict[str, Any]
    created_at: datetime


class ReportLinks(Model):
    self: str
    job: str
    download: str
    chart: str


class Report(Model):
    id: uuid.UUID
    kind: ReportKind
    format: ReportFormat
    params: dict[str, Any]
    status: JobStatus
    row_count: int | None
    size_bytes: int | None
    created_at: datetime
    expires_at: datetime | None
    links: ReportLinks


# --- not schemas of the document: the ``result`` of an import job (SPEC, "Bulk imports") ---


class ImportLineError(Model):
    line: int
    sku: str | None
    reason: str


class ImportResult(Model):
    lines: int
    applied: int
    rejected: int
    errors: list[ImportLineError]
