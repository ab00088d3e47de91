"""jobs: partial index for listing jobs of one kind other than audit

``GET /jobs?kind=webhook`` (or ``report``) looked for a few jobs among millions of audit jobs
by walking ix_jobs_created_at_id. Audit jobs stay out of the index, so the restock path, which
inserts one per request, pays nothing for it; a list of audit jobs is the bulk of the table
and is served by ix_jobs_created_at_id as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 13:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_kind_created_at_id",
        "jobs",
        ["kind", "created_at", "id"],
        unique=False,
        postgresql_where=sa.text("kind <> 'audit'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_kind_created_at_id", table_name="jobs")
