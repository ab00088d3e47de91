"""Detecting a low-stock crossing inside the mutation's transaction."""

from __future__ import annotations

import uuid

from shared.db.unit_of_work import UnitOfWork
from shared.jobs.kinds import JobKind
from shared.jobs.outbox import create_job

EVENT_TYPE = "stock.low"


async def check_crossing(
    uow: UnitOfWork, product_id: int, sku: str, location_code: str, decrease: int
) -> uuid.UUID | None:
    """After a decrease of ``decrease`` units (already applied in this transaction): when
    ``on_hand`` went from above ``reorder_point`` to at or below it, write a webhook job.
    Concurrent decreases of one product serialise on its row, so each crossing is seen once."""
    if not uow.webhooks_enabled or decrease <= 0:
        return None
    # Lock first, then sum in a statement of its own: its snapshot sees every decrease
    # committed by whoever held the lock before us.
    reorder_point = await uow.conn.fetchval(
        "SELECT reorder_point FROM products WHERE id = $1 FOR NO KEY UPDATE", product_id
    )
    if reorder_point is None:
        return None
    after = int(
        await uow.conn.fetchval(
            "SELECT coalesce(sum(quantity), 0) FROM stock_levels WHERE product_id = $1",
            product_id,
        )
    )
    before = after + decrease
    if not (before > reorder_point >= after):
        return None
    return await create_job(
        uow,
        JobKind.webhook,
        {
            "type": EVENT_TYPE,
            "data": {
                "sku": sku,
                "on_hand": after,
                "reorder_point": reorder_point,
                "location_code": location_code,
            },
        },
        uow.job_max_tries,
    )
