"""The audit log: one entry per accepted mutation, written by the worker."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import ConnDep, requires
from shared.audit import service
from shared.audit.schemas import AuditEntry
from shared.auth.keys import Scope
from shared.auth.service import Principal
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from shared.types import Timestamp

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=Page[AuditEntry])
async def list_audit(
    conn: ConnDep,
    _: Annotated[Principal, requires(Scope.audit_read)],
    action: Annotated[str | None, Query(max_length=100)] = None,
    sku: Annotated[str | None, Query(max_length=32)] = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[AuditEntry]:
    """Newest first; `sku` matches entries that touched it (a batch touches several);
    `[since, until)` on the mutation's time."""
    return await service.list_entries(
        conn, action=action, sku=sku, since=since, until=until, limit=limit, cursor=cursor
    )
