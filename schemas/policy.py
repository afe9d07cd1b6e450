"""The routing part of the escalation policy (operator-edited YAML, ESCALATE_POLICY_FILE)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

from schemas.common import Severity, Tier
from schemas.rules import ClassificationRules

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    """Durations are written like ``30s``, ``15m``, ``1h``, ``24h``, ``2d``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    raise ValueError(f"{value!r} is not a duration like 30s, 15m, 1h or 24h")


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]


class SeverityRoute(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notify: list[Tier] = Field(min_length=1)
    ack_within: Duration
    escalate_up_to: Tier | None = None


class Routing(BaseModel):
    """Who hears about what, and who may see the reporter's contact details."""

    model_config = ConfigDict(extra="forbid")

    severities: dict[Severity, SeverityRoute]
    escalation_ladder: list[Tier] = Field(min_length=1)
    contact_visible_to: list[Tier] = Field(
        default_factory=lambda: [Tier.district_office, Tier.city_office, Tier.police],
        description="Tiers whose notifications include the reporter's contact details.",
    )

    @model_validator(mode="after")
    def _complete(self) -> Routing:
        missing = [s.value for s in Severity if s not in self.severities]
        if missing:
            raise ValueError(f"severities is missing {', '.join(missing)}")
        return self


class Policy(Routing):
    """The whole policy file: routing plus the classification rules."""

    classification: ClassificationRules = Field(default_factory=ClassificationRules)
