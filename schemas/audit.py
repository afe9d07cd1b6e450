"""Audit events: the proof of who was told what and when."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class AuditEventType(StrEnum):
    received = "received"
    classified = "classified"
    routed = "routed"
    notified = "notified"
    notify_failed = "notify_failed"
    dead_lettered = "dead_lettered"
    escalated = "escalated"  # a step: new tiers told and/or unacknowledged ones reminded
    acknowledged = "acknowledged"
    resolved = "resolved"
    note_added = "note_added"
    reclassified = "reclassified"
    grouped = "grouped"  # a later report joined an open incident (why: link, account, text)
    updated = "updated"  # the incident took in a later report (and re-routed if it raised)


class AuditEvent(BaseModel):
    """One fact about an incident. ``detail`` never holds report text or contact details."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    event_id: str = Field(description="Deterministic, so a replayed event is written once.")
    incident_id: str
    event: AuditEventType
    at: datetime
    report_ids: list[str] = Field(default_factory=list)
    tracking_codes: list[str] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict)


class DeadLetter(BaseModel):
    """A message no stage could process, kept with the reason so nothing is silently dropped."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    source_topic: str
    incident_id: str | None = Field(
        default=None,
        description="The incident the message was about, when that could be told; the audit "
        "writer records a dead_lettered event on that incident's trail.",
    )
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    stage: str
    reason: str
    at: datetime
    payload: str = Field(description="The original bytes, decoded as UTF-8 with replacement.")
