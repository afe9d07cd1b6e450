"""Where an incident stands: who was told, who acknowledged, when the next step is due.

The escalator keeps one ``EscalationState`` per incident on the compacted topic
``escalation.state.v1`` (key: incident id), written in the same Kafka transaction as the
notifications and audit events that changed it, so a worker killed at any moment resumes from
exactly the last committed state. The intake reads the same topic to show an incident's status.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.common import Category, Severity, Tier
from schemas.incidents import GroupMatch, IncidentClassified, IncidentUpdate
from schemas.reports import ReportIn

#: later reports kept whole in an incident's state (and shown in mails); the count goes on
MAX_LATER_REPORTS = 20


class IncidentStatus(StrEnum):
    open = "open"  # nobody has acknowledged yet
    acknowledged = "acknowledged"
    resolved = "resolved"


class Acknowledgement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str = Field(description="The recipient's address or the authority client's name.")
    at: datetime
    via: Literal["link", "api"]


class TierState(BaseModel):
    """One organisation's part in an incident."""

    model_config = ConfigDict(extra="forbid")

    notified_at_step: int | None = Field(
        default=None, description="The step at which this tier was first told; None: not yet."
    )
    acknowledged: Acknowledgement | None = None
    reports_seen: int = Field(
        default=1,
        ge=0,
        description="How many of the incident's reports the last mail to this tier showed.",
    )


class ReviewState(BaseModel):
    """Human triage of an incident (policy ``review``): asked when, answered by whom."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(description="Why it went to triage (ReviewReason), or 'unasked'.")
    opened_at: datetime
    due: datetime | None = Field(
        default=None,
        description="When the next rung of the review ladder is asked; None: reviewed, "
        "resolved, or the ladder is spent.",
    )
    ladder_position: int = Field(
        default=0, ge=0, description="Rungs of the review ladder already asked or skipped."
    )
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    reviewed_tier: Tier | None = None
    previous_severity: Severity | None = Field(
        default=None, description="The severity before the latest review."
    )
    previous_category: Category | None = None


class LaterReport(BaseModel):
    """A report that joined the incident after it was opened (an ``IncidentUpdate``)."""

    model_config = ConfigDict(extra="forbid")

    report_id: str
    tracking_code: str
    received_at: datetime
    severity: Severity = Field(description="How this report alone was classified.")
    category: Category
    match: GroupMatch
    report: ReportIn


class EscalationState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    incident_id: str
    incident: IncidentClassified | None = Field(
        default=None,
        description="None while only actions are known (an acknowledgement can overtake the "
        "routing of its incident); they are kept and applied when the incident arrives.",
    )
    severity: Severity | None = Field(default=None, description="Current, after any review.")
    category: Category | None = None
    step: int = Field(default=0, ge=0, description="The last step taken; 0 is the first notice.")
    next_due: datetime | None = Field(
        default=None,
        description="The earliest of escalation_due and review.due: the one time the worker "
        "watches. None: nothing further is due.",
    )
    escalation_due: datetime | None = Field(
        default=None,
        description="When the next escalation step is due; None: no further step. A state "
        "written before reviews existed has only next_due, which meant this.",
    )
    reminders_at_top: int = Field(
        default=0, ge=0, description="Reminders sent after the ladder ended (bounded by policy)."
    )
    tiers: dict[Tier, TierState] = Field(default_factory=dict)
    resolved: Acknowledgement | None = None
    resolved_tier: Tier | None = None
    withheld: list[Tier] = Field(
        default_factory=list,
        description="Tiers the severity names but a model-only raise keeps waiting until a "
        "person reviews it (policy second_opinion.withhold_until_review); never climbed to.",
    )
    review: ReviewState | None = Field(
        default=None, description="Present when the incident went to triage or was reviewed."
    )
    applied_actions: list[str] = Field(
        default_factory=list, description="Ids of the actions already applied (bounded)."
    )
    later_reports: list[LaterReport] = Field(
        default_factory=list,
        description=f"The latest {MAX_LATER_REPORTS} reports that joined after the first; "
        "their ids and tracking codes are all in ``incident``.",
    )
    digest_due: datetime | None = Field(
        default=None,
        description="When an update digest goes to the tiers told that no mail has shown the "
        "latest reports yet (a reminder shows them first if one comes sooner); at most one "
        "digest per ack_within.",
    )
    last_digest_at: datetime | None = None
    early_updates: list[IncidentUpdate] = Field(
        default_factory=list,
        description="Updates that arrived before their incident (separate topics do not keep "
        f"order between them); applied when it comes. Bounded at {MAX_LATER_REPORTS}.",
    )
    updated_at: datetime

    @property
    def report_count(self) -> int:
        return len(self.incident.report_ids) if self.incident is not None else 0

    @model_validator(mode="before")
    @classmethod
    def _escalation_due_from_next_due(cls, data: Any) -> Any:
        # States on the compacted topic from before reviews carry one deadline, next_due.
        if isinstance(data, dict) and "escalation_due" not in data and "next_due" in data:
            return {**data, "escalation_due": data["next_due"]}
        return data

    @property
    def status(self) -> IncidentStatus:
        if self.resolved is not None:
            return IncidentStatus.resolved
        if any(t.acknowledged for t in self.tiers.values()):
            return IncidentStatus.acknowledged
        return IncidentStatus.open
