"""Requests to tell one recipient about one incident, and what came of them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import Category, Severity, Tier
from schemas.directory import Email, WebhookTarget
from schemas.reports import ReporterContact


class NotificationKind(StrEnum):
    """Why a recipient gets this mail; the subject and opening line say it in both languages."""

    first_notice = "first_notice"
    reminder = "reminder"  # you were told and have not acknowledged yet
    escalation = "escalation"  # you are told now because nobody below you acknowledged
    acknowledged = "acknowledged"  # an organisation acknowledged: for your information
    resolved = "resolved"  # an organisation closed the incident: for your information
    review = "review"  # the classifier was unsure: a person must look at it
    update = "update"  # more reports came in about an incident you were already told of


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: Tier
    name: str
    email: Email
    webhooks: list[WebhookTarget] = Field(
        default_factory=list,
        description="The organisation's systems told besides this mail; on one recipient of "
        "each organisation only, so each system hears of each step once.",
    )
    telegram_chat_ids: list[int] = Field(
        default_factory=list,
        description="The organisation's duty chats alerted on Telegram besides this mail (on "
        "one recipient of each organisation, like webhooks).",
    )


class LaterReportNote(BaseModel):
    """A later report of the same event, as a recipient may see it (contact redacted)."""

    model_config = ConfigDict(extra="forbid")

    tracking_code: str
    received_at: datetime
    severity: Severity
    category: Category
    description: str
    immediate_danger: bool = False
    contact: ReporterContact | None = None


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
    report_count: int = Field(
        default=1, ge=1, description="Reports of this event so far (the first and later ones)."
    )
    later_reports: list[LaterReportNote] = Field(
        default_factory=list,
        description="The later reports this mail shows (the latest ones, bounded).",
    )
    new_reports: int = Field(
        default=0,
        ge=0,
        description="How many reports came in since the last mail to the tiers told.",
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
    channel: Literal["email", "webhook", "telegram"] = "email"
    target: str | None = Field(
        default=None, description="The webhook's URL, or the Telegram chat id (not for mail)."
    )
    step: int
    status: DeliveryStatus
    attempts: int
    at: datetime
    message_id: str
    error: str | None = None
