"""A classified incident: one or more reports of one event, with the decision that was made."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import Category, Severity
from schemas.reports import ReportIn

#: The reason the classifier adds when the reporter ticked immediate_danger and no matched rule
#: is critical: the decision is critical only on the reporter's word (a category_hint is the
#: reporter's word too). Triage keys on it (``ReviewPolicy.danger_without_rule``).
DANGER_WITHOUT_RULE = "immediate_danger ticked; no critical rule matched"


class Decision(BaseModel):
    """Why a report got its severity and category; kept with the incident for the audit trail."""

    model_config = ConfigDict(extra="forbid")

    severity: Severity
    category: Category
    reasons: list[str] = Field(default_factory=list)
    needs_review: bool = False
    rules_version: str = Field(description="Content hash of the policy and rules that decided.")


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
