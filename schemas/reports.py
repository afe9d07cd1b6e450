"""What a reporter submits, and the accepted report as it travels on Kafka."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AnyHttpUrl, BaseModel, ConfigDict, EmailStr, Field

from schemas.common import Category, Channel, ReporterRole, nfc

MAX_DESCRIPTION_CHARS = 10_000

NfcStr = Annotated[str, AfterValidator(nfc)]


class ReporterContact(BaseModel):
    """How to reach the reporter. Sensitive: only tiers the policy names may see it."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[NfcStr | None, Field(max_length=200)] = None
    phone: Annotated[str | None, Field(max_length=40, pattern=r"^[0-9+() .-]{3,40}$")] = None
    email: EmailStr | None = None


class ReportIn(BaseModel):
    """A report as a reporter (or a channel adapter on their behalf) sends it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    channel: Channel
    reporter_role: ReporterRole
    school_code: Annotated[str, Field(min_length=2, max_length=40, pattern=r"^[A-Za-z0-9._-]+$")]
    description: Annotated[NfcStr, Field(min_length=5, max_length=MAX_DESCRIPTION_CHARS)]
    immediate_danger: bool = False
    category_hint: Category | None = None
    occurred_at: datetime | None = None
    contact: ReporterContact | None = None
    evidence_urls: Annotated[list[AnyHttpUrl], Field(max_length=20)] = []


class ReportSubmitted(BaseModel):
    """An accepted report: written to Kafka before the reporter is told 'accepted'."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    report_id: str
    tracking_code: str
    received_at: datetime
    intake_client: str = Field(description="Name of the API key or channel that brought it in.")
    report: ReportIn
