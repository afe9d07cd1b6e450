"""Requests to tell one recipient about one incident, and what came of them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import Category, Severity, Tier
from schemas.directory import Email
from schemas.reports import ReporterContact


class NotificationKind(StrEnum):
    """Why a recipient gets this mail; the subject and opening line say it in both languages."""

    first_notice = "first_notice"
    reminder = "reminder"  # you were told and have not acknowledged yet
    escalation = "escalation"  # you are told now because nobody below you acknowledged
    acknowledged = "acknowledged"  # an organisation acknowledged: for your information
    resolved = "resolved"  # an organisation closed the incident: for your information
    review = "review"  # the classifier was unsure: a person must look at it


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: Tier
    name: str
    email: Email


class NotificationRequest(BaseModel):
    """Everything the notifier needs to render one message; already redacted for the recipient."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    notification_id: str = Field(description="Deterministic: incident, recipient and step.")
    incident_id: str
    step: int = Field(ge=0, description="0 for the first notice, n for the n-th escalation.")
    kind: NotificationKind = NotificationKind.first_notice
    acted_by: Tier | None = Field(
        default=None, description="For acknowledged/resolved: the organisation that acted."
    )
    acted_by_name: str | None = None
    recipient: Recipient
    severity: Severity
    category: Category
    school_code: str
    school_name: str
    district_name: str | None = None
    unknown_school: bool = False
    description: str
    occurred_at: datetime | None = None
    received_at: datetime
    ack_due_at: datetime
    report_ids: list[str]
    tracking_codes: list[str]
    reasons: list[str] = Field(default_factory=list)
    needs_review: bool = False
    rules_version: str
    immediate_danger: bool = False
    evidence_urls: list[str] = Field(default_factory=list)
    contact: ReporterContact | None = Field(
        default=None, description="Present only when the policy lets this tier see it."
    )


class DeliveryStatus(StrEnum):
    delivered = "delivered"
    failed = "failed"


class DeliveryResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    notification_id: str
    incident_id: str
    tier: Tier
    recipient_email: str
    step: int
    status: DeliveryStatus
    attempts: int
    at: datetime
    message_id: str
    error: str | None = None
