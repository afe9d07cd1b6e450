"""Tables of the audit trail. The schema itself is created only by the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

GENESIS_HASH = "0" * 64


class UTCDateTime(TypeDecorator[datetime]):
    """Always hand back aware UTC datetimes: SQLite forgets the offset, PostgreSQL keeps it.

    The hash chain is computed over these values, so both databases must return the same thing.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite stores the text it is given; drop the offset so every row has one format.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class AuditRow(Base):
    """One audit event, linked to the previous event of the same incident by ``prev_hash``.

    ``seq`` numbers the events of an incident from 1; (incident_id, seq) is unique, so two
    writers racing to extend the same chain cannot both succeed.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("event_id", name="uq_audit_events_event_id"),
        UniqueConstraint("incident_id", "seq", name="uq_audit_events_incident_seq"),
        Index("ix_audit_events_incident_at", "incident_id", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128))
    incident_id: Mapped[str] = mapped_column(String(200), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    report_ids: Mapped[list[str]] = mapped_column(JSON)
    tracking_codes: Mapped[list[str]] = mapped_column(JSON)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class ReportRef(Base):
    """Which incidents a report id or tracking code belongs to, for lookups by either.

    ``kind`` is ``report_id`` or ``tracking_code``. A report merged into a second incident
    simply gets a second row.
    """

    __tablename__ = "audit_report_refs"
    __table_args__ = (
        UniqueConstraint("kind", "ref", "incident_id", name="uq_audit_report_refs"),
        Index("ix_audit_report_refs_ref", "ref"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))
    ref: Mapped[str] = mapped_column(String(200))
    incident_id: Mapped[str] = mapped_column(String(200))
