"""Inventory request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictInt, model_validator

from shared.types import STRICT_INPUT, LocationCode, ShortText, Sku, Timestamp
from shared.urls import job_path

Quantity = Annotated[StrictInt, Field(ge=1, le=1_000_000)]
Delta = Annotated[StrictInt, Field(ge=-1_000_000, le=1_000_000)]
Reference = Annotated[str, Field(min_length=1, max_length=100)]
Note = Annotated[str, Field(max_length=1000)]


AdjustmentReason = Literal["count", "damage", "pick", "return", "correction"]


class LocationCreate(BaseModel):
    model_config = STRICT_INPUT

    code: LocationCode
    name: ShortText | None = None


class Location(BaseModel):
    id: int
    code: str
    name: str | None
    created_at: datetime


class RestockLine(BaseModel):
    model_config = STRICT_INPUT

    sku: Sku
    quantity: Quantity
    location_code: LocationCode = "MAIN"
    reference: Reference | None = None
    note: Note | None = None


class RestockBatch(BaseModel):
    model_config = STRICT_INPUT

    lines: Annotated[list[RestockLine], Field(min_length=1, max_length=1000)]
    reference: Reference | None = None


class Adjustment(BaseModel):
    model_config = STRICT_INPUT

    sku: Sku
    location_code: LocationCode
    delta: Delta
    reason: AdjustmentReason
    note: Note | None = None

    @model_validator(mode="after")
    def _non_zero(self) -> Adjustment:
        if self.delta == 0:
            raise ValueError("delta must not be 0")
        return self


class Transfer(BaseModel):
    model_config = STRICT_INPUT

    sku: Sku
    from_location: LocationCode
    to_location: LocationCode
    quantity: Quantity

    @model_validator(mode="after")
    def _distinct(self) -> Transfer:
        if self.from_location == self.to_location:
            raise ValueError("from_location and to_location must differ")
        return self


class Movement(BaseModel):
    id: int
    sku: str
    location_code: str
    delta: int
    reason: str
    reference: str | None
    created_at: datetime


class StockLevel(BaseModel):
    sku: str
    location_code: str
    quantity: int
    updated_at: datetime


class JobLink(BaseModel):
    id: uuid.UUID
    status_url: str

    @classmethod
    def for_job(cls, job_id: uuid.UUID) -> JobLink:
        return cls(id=job_id, status_url=job_path(job_id))


class RestockResult(BaseModel):
    movement: Movement
    stock: StockLevel
    audit_job: JobLink


class BatchResult(BaseModel):
    movements: list[Movement]
    stock: list[StockLevel]
    audit_job: JobLink


class AdjustmentResult(BaseModel):
    movement: Movement
    stock: StockLevel
    audit_job: JobLink


class TransferResult(BaseModel):
    movements: list[Movement]
    stock: list[StockLevel]
    audit_job: JobLink


class LevelView(BaseModel):
    location_code: str
    quantity: int
    updated_at: datetime


class InventoryView(BaseModel):
    sku: str
    on_hand: int
    levels: list[LevelView]


class LowStockItem(BaseModel):
    sku: str
    title: str
    category: str | None
    on_hand: int
    reorder_point: int


class MovementFilter(BaseModel):
    sku: str | None = None
    location_code: str | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None
