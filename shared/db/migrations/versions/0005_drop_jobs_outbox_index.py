"""jobs: drop ix_jobs_outbox, which nothing reads any more

The relay that scanned jobs not yet handed to Redis (``enqueued_at IS NULL``) is gone: durable
jobs are claimed from the table (ix_jobs_due) and audit events drained from it
(ix_jobs_audit_pending). Every restock inserts an audit job into this partial index, so it was
pure write cost on the hot path.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index(
        "ix_jobs_outbox",
        table_name="jobs",
        postgresql_where=sa.text("enqueued_at IS NULL AND status = 'queued'"),
    )


def downgrade() -> None:
    op.create_index(
        "ix_jobs_outbox",
        "jobs",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("enqueued_at IS NULL AND status = 'queued'"),
    )
