"""Report request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, model_validator

from shared.jobs.kinds import JobStatus
from shared.types import STRICT_INPUT, LocationCode, ShortText, Sku, Timestamp


class ReportKind(StrEnum):
    valuation = "valuation"
    movements = "movements"
    low_stock = "low_stock"


class ReportFormat(StrEnum):
    csv = "csv"
    json = "json"
    xlsx = "xlsx"


CONTENT_TYPES = {
    ReportFormat.csv: "text/csv; charset=utf-8",
    ReportFormat.json: "application/json",
    ReportFormat.xlsx: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


class ValuationParams(BaseModel):
    """Optional filters: one category, one location."""

    model_config = STRICT_INPUT

    category: ShortText | None = None
    location_code: LocationCode | None = None


class MovementsParams(BaseModel):
    """The ledger in `[since, until)` (RFC 3339 with offset), per SKU per UTC day."""

    model_config = STRICT_INPUT

    since: Timestamp
    until: Timestamp
    sku: Sku | None = None
    location_code: LocationCode | None = None

    @model_validator(mode="after")
    def _window(self) -> MovementsParams:
        if self.until <= self.since:
            raise ValueError("until must be after since")
        return self


class LowStockParams(BaseModel):
    """Optional filter: one category."""

    model_config = STRICT_INPUT

    category: ShortText | None = None


class ValuationRequest(BaseModel):
    model_config = STRICT_INPUT

    kind: Literal[ReportKind.valuation]
    format: ReportFormat
    params: ValuationParams = Field(default_factory=ValuationParams)


class MovementsRequest(BaseModel):
    model_config = STRICT_INPUT

    kind: Literal[ReportKind.movements]
    format: ReportFormat
    params: MovementsParams


class LowStockRequest(BaseModel):
    model_config = STRICT_INPUT

    kind: Literal[ReportKind.low_stock]
    format: ReportFormat
    params: LowStockParams = Field(default_factory=LowStockParams)


ReportRequest = Annotated[
    ValuationRequest | MovementsRequest | LowStockRequest, Field(discriminator="kind")
]
REPORT_REQUEST: TypeAdapter[ValuationRequest | MovementsRequest | LowStockRequest] = TypeAdapter(
    ReportRequest
)


def job_payload(request: ValuationRequest | MovementsRequest | LowStockRequest) -> dict[str, Any]:
    """What the report's job carries: the request, normalised (times in UTC, no nulls)."""
    return request.model_dump(mode="json", exclude_none=True)


class ReportLinks(BaseModel):
    self: str
    job: str
    download: str
    chart: str


class Report(BaseModel):
    id: uuid.UUID
    kind: ReportKind
    format: ReportFormat
    params: dict[str, Any]
    status: JobStatus
    row_count: int | None = Field(description="Rows in the report; set once it is complete.")
    size_bytes: int | None = Field(description="The download's length; set once complete.")
    created_at: datetime
    expires_at: datetime | None = Field(
        description="When the files are deleted (STOCKROOM_REPORT_RETENTION_HOURS after "
        "completion); the metadata stays."
    )
    links: ReportLinks
