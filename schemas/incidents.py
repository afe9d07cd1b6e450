"""A classified incident: one or more reports of one event, with the decision that was made."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import Category, Severity
from schemas.reports import ReportIn

#: The reason the classifier adds when the reporter ticked immediate_danger and no matched rule
#: is critical: the decision is critical only on the reporter's word (a category_hint is the
#: reporter's word too). Triage keys on it (``ReviewPolicy.danger_without_rule``).
DANGER_WITHOUT_RULE = "immediate_danger ticked; no critical rule matched"


class ModelView(BaseModel):
    """What the learned second opinion said about a report, and what it changed.

    ``raised_from`` is set when the model alone rated the report higher than the rules did: the
    decision then carries the model's severity, and the policy's ``second_opinion`` section says
    which tiers wait for a person to confirm it (the police, by default).
    """

    model_config = ConfigDict(extra="forbid")

    model_version: str = Field(description="First 12 hex digits of the model file's sha256.")
    severity: Severity = Field(description="The model's severity at the policy's threshold.")
    probability: float = Field(ge=0, le=1, description="P(severity at least this), per model.")
    category: Category
    category_probability: float = Field(ge=0, le=1)
    features: list[str] = Field(
        default_factory=list, description="The n-grams that pushed hardest towards its severity."
    )
    raised_from: Severity | None = Field(
        default=None, description="The rules' severity, when the model alone raised it."
    )
    category_from: Category | None = Field(
        default=None, description="The rules' category ('other'), when the model proposed one."
    )


class Decision(BaseModel):
    """Why a report got its severity and category; kept with the incident for the audit trail."""

    model_config = ConfigDict(extra="forbid")

    severity: Severity
    category: Category
    reasons: list[str] = Field(default_factory=list)
    needs_review: bool = False
    rules_version: str = Field(description="Content hash of the policy and rules that decided.")
    model_version: str | None = Field(
        default=None,
        description="The model that gave a second opinion; None: the rules decided alone.",
    )
    second_opinion: ModelView | None = None

    @property
    def model_raised(self) -> bool:
        """The model alone rated this report higher than the rules."""
        return self.second_opinion is not None and self.second_opinion.raised_from is not None


class IncidentClassified(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    incident_id: str
    report_ids: list[str]
    tracking_codes: list[str]
    school_code: str
    received_at: datetime
    classified_at: datetime
    decision: Decision
    report: ReportIn
    follow_up_of: str | None = Field(
        default=None, description="Copied from the report: the incident it adds to, if any."
    )


class MatchKind(StrEnum):
    """Why a later report joined an open incident."""

    link = "link"  # the same meeting link or meeting id
    account = "account"  # the same named account or phone number
    text = "text"  # folded words similar above the policy's threshold
    follow_up = "follow_up"  # the reporter added it from the status page of an earlier report


class GroupMatch(BaseModel):
    """The evidence for grouping, as the audit timeline shows it (never report text)."""

    model_config = ConfigDict(extra="forbid")

    kind: MatchKind
    label: str = Field(
        default="",
        description="What matched, without personal data: 'zoom', 'meet', 'phone', 'account', "
        "'words' or 'tracking code'.",
    )
    score: float = Field(default=1.0, ge=0, le=1, description="1 for links and accounts.")


class IncidentUpdate(BaseModel):
    """A later report of an event that already has an open incident (``incidents.updates``)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    incident_id: str = Field(description="The incident the report joins.")
    report_id: str
    tracking_code: str
    school_code: str
    received_at: datetime
    grouped_at: datetime
    match: GroupMatch
    decision: Decision = Field(description="How the later report alone was classified.")
    report: ReportIn
