"""The body of a webhook notification: what an authority's system receives, signed per the
Standard Webhooks specification (headers ``webhook-id``, ``webhook-timestamp``,
``webhook-signature``). The same facts as the mail to that organisation, already redacted for
it; a system acknowledges through the authority API (``/v1/incidents/{incident_id}/…``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import Category, Severity, Tier
from schemas.notifications import NotificationKind
from schemas.reports import ReporterContact


class IncidentNotice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    incident_id: str
    kind: NotificationKind
    step: int = Field(ge=0, description="0 for the first notice, n for the n-th escalation.")
    tier: Tier = Field(description="The organisation this notice is for, by its tier.")
    organisation: str
    severity: Severity
    category: Category
    school_code: str
    school_name: str
    district_name: str | None = None
    unknown_school: bool = False
    immediate_danger: bool = False
    description: str
    occurred_at: datetime | None = None
    received_at: datetime
    ack_due_at: datetime
    tracking_codes: list[str]
    report_count: int = Field(ge=1)
    new_reports: int = Field(default=0, ge=0)
    evidence_urls: list[str] = Field(default_factory=list)
    contact: ReporterContact | None = Field(
        default=None, description="Present only when the policy lets this tier see it."
    )
    acted_by: Tier | None = None


class WebhookEvent(BaseModel):
    """``{"type", "timestamp", "data"}`` as Standard Webhooks suggests; ``webhook-id`` (the
    header) is the same on every retry, so a receiver handles each event once."""

    model_config = ConfigDict(extra="forbid")

    type: Literal[
        "incident.first_notice",
        "incident.reminder",
        "incident.escalation",
        "incident.update",
        "incident.acknowledged",
        "incident.resolved",
        "incident.review",
    ]
    timestamp: datetime
    data: IncidentNotice
