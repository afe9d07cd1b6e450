"""What people do about an incident: acknowledge it, resolve it, add a note, reclassify it.

Actions come from the personal link in a notification mail (``via="link"``) or from an
authority's system (``via="api"``), travel on ``incidents.actions.v1`` keyed by incident id, and
are applied by the escalator, which stops or continues the climb accordingly. The audit trail
keeps who acted, for which organisation and when; of a note it keeps only the length.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from schemas.common import Category, Severity, Tier, clean_text

MAX_NOTE_CHARS = 2000


class ActionKind(StrEnum):
    acknowledge = "acknowledge"
    resolve = "resolve"  # handled, no further action
    note = "note"
    reclassify = "reclassify"  # a reviewer sets severity and category


class IncidentAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    action_id: str = Field(description="Unique per action; a repeated action is applied once.")
    incident_id: str
    kind: ActionKind
    tier: Tier = Field(description="The organisation that acted.")
    actor: str = Field(description="The recipient's address, or the authority client's name.")
    via: Literal["link", "api"]
    at: datetime
    note: Annotated[str, AfterValidator(clean_text), Field(max_length=MAX_NOTE_CHARS)] | None = None
    severity: Severity | None = Field(default=None, description="Only for reclassify.")
    category: Category | None = Field(default=None, description="Only for reclassify.")
