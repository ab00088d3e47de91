"""reports: published report files and their chunks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 23:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("blob_id", sa.UUID(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("chart_bytes", sa.BigInteger(), nullable=False),
        sa.Column("totals", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("generated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["id"], ["jobs.id"], name=op.f("fk_reports_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reports")),
    )
    op.create_index(
        "ix_reports_expires_at",
        "reports",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("purged_at IS NULL"),
    )
    op.create_table(
        "report_chunks",
        sa.Column("report_id", sa.UUID(), nullable=False),
        sa.Column("blob_id", sa.UUID(), nullable=False),
        sa.Column("part", sa.SmallInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("part IN (0, 1)", name=op.f("ck_report_chunks_part_known")),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["jobs.id"],
            name=op.f("fk_report_chunks_report_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "report_id", "blob_id", "part", "seq", name=op.f("pk_report_chunks")
        ),
    )
    # Chunks are ~1 MiB: stored out of line, uncompressed (XLSX is deflated already; pglz
    # would cost more CPU than the space it saves is worth on the write path).
    op.execute("ALTER TABLE report_chunks ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("report_chunks")
    op.drop_index("ix_reports_expires_at", table_name="reports")
    op.drop_table("reports")
