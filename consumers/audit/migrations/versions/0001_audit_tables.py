"""Audit trail: hash-chained events and the report/tracking-code index.

Revision ID: 0001_audit_tables
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_audit_tables"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("incident_id", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("report_ids", sa.JSON(), nullable=False),
        sa.Column("tracking_codes", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("event_id", name="uq_audit_events_event_id"),
        sa.UniqueConstraint("incident_id", "seq", name="uq_audit_events_incident_seq"),
    )
    op.create_index("ix_audit_events_incident_id", "audit_events", ["incident_id"])
    op.create_index("ix_audit_events_incident_at", "audit_events", ["incident_id", "at"])
    op.create_table(
        "audit_report_refs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("ref", sa.String(200), nullable=False),
        sa.Column("incident_id", sa.String(200), nullable=False),
        sa.UniqueConstraint("kind", "ref", "incident_id", name="uq_audit_report_refs"),
    )
    op.create_index("ix_audit_report_refs_ref", "audit_report_refs", ["ref"])


def downgrade() -> None:
    op.drop_index("ix_audit_report_refs_ref", table_name="audit_report_refs")
    op.drop_table("audit_report_refs")
    op.drop_index("ix_audit_events_incident_at", table_name="audit_events")
    op.drop_index("ix_audit_events_incident_id", table_name="audit_events")
    op.drop_table("audit_events")
