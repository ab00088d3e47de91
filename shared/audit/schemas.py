"""Audit entry bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel


class AuditActor(BaseModel):
    key_id: uuid.UUID | None
    name: str | None


class AuditEntry(BaseModel):
    id: int
    action: str
    actor: AuditActor
    request_id: str | None
    subject: str | None
    payload: dict[str, Any]
    created_at: datetime
