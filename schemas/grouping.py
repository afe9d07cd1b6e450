"""Grouping duplicate reports of one event into one incident (policy ``grouping:``).

The grouper keeps, per school, the incidents still open to new reports, with just enough of
each to recognise another report of the same event: keyed hashes of its meeting links and
ids, named accounts and phone numbers, and of its folded words. Equality of hashes is all that
matching needs, so the state on the compacted topic holds no readable report text, link or
phone number; an entry is forgotten once its window has passed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.common import Severity
from schemas.durations import Duration
from schemas.incidents import MatchKind


class GroupingPolicy(BaseModel):
    """When a report joins an open incident instead of opening its own."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    window: Duration = Field(
        default_factory=lambda: timedelta(minutes=30),
        description="A report joins an incident of the same school whose latest report is at "
        "most this much older (the window slides with each report that joins).",
    )
    match_on: list[MatchKind] = Field(
        default_factory=lambda: [MatchKind.link, MatchKind.account, MatchKind.text],
        description="Which evidence may group: link (meeting link or id), account (named "
        "account or phone number), text (word similarity).",
    )
    similarity: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="Token-set Jaccard of the folded words at or above which two reports "
        "are the same event.",
    )
    min_words: int = Field(
        default=4,
        ge=1,
        description="Text similarity is only trusted when both reports have this many "
        "distinct words (short reports group by link or account only).",
    )
    max_open_per_school: int = Field(
        default=200,
        ge=1,
        description="Open incidents remembered per school; the oldest is forgotten first.",
    )

    @field_validator("window")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value

    @field_validator("match_on")
    @classmethod
    def _evidence_only(cls, value: list[MatchKind]) -> list[MatchKind]:
        # A follow-up joins the incident its reporter chose whatever this list says; naming it
        # here would suggest it can be switched off.
        if MatchKind.follow_up in value:
            raise ValueError("follow_up is not evidence to match on (follow-ups always join)")
        twice = sorted({k.value for k in value if value.count(k) > 1})
        if twice:
            raise ValueError(f"names {', '.join(twice)} more than once")
        return value


class OpenIncident(BaseModel):
    """One incident still open to later reports, as the grouper remembers it (hashes only)."""

    model_config = ConfigDict(extra="forbid")

    incident_id: str
    severity: Severity
    opened_at: datetime
    last_report_at: datetime
    report_count: int = Field(default=1, ge=1)
    links: list[str] = Field(default_factory=list, description="Keyed hashes of meeting keys.")
    accounts: list[str] = Field(default_factory=list, description="Keyed hashes of accounts.")
    words: list[str] = Field(default_factory=list, description="Keyed hashes of folded words.")
    seen: list[str] = Field(
        default_factory=list,
        description="Fingerprints of the reports already counted (hashes of their time and "
        "hashed evidence), so a report remembered twice is counted once.",
    )


class SchoolGroups(BaseModel):
    """The grouper's state for one school (``grouping.state.v1``, key: school)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    school: str
    open: list[OpenIncident] = Field(default_factory=list)
    updated_at: datetime
