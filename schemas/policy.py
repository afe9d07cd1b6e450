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


def _days(n: int) -> timedelta:
    return timedelta(days=n)


class AcknowledgementPolicy(BaseModel):
    """How acknowledgement links work and how long the escalator keeps asking."""

    model_config = ConfigDict(extra="forbid")

    link_valid_for: Duration = Field(
        default_factory=lambda: _days(7),
        description="How long the personal acknowledgement link in a mail keeps working.",
    )
    max_reminders: int = Field(
        default=6,
        ge=0,
        le=100,
        description="Reminders sent, one per ack_within, once the ladder has no tier left.",
    )
    critical_all_tiers_within: Duration = Field(
        default_factory=lambda: timedelta(hours=12),
        description="Decree 56/2017: a critical incident not acknowledged by police must have "
        "reached every tier within this time. `escalate policy check` refuses a ladder and "
        "deadlines that could miss it.",
    )


class Routing(BaseModel):
    """Who hears about what, and who may see the reporter's contact details."""

    model_config = ConfigDict(extra="forbid")

    severities: dict[Severity, SeverityRoute]
    escalation_ladder: list[Tier] = Field(min_length=1)
    contact_visible_to: list[Tier] = Field(
        default_factory=lambda: [Tier.district_office, Tier.city_office, Tier.police],
        description="Tiers whose notifications include the reporter's contact details.",
    )
    acknowledgement: AcknowledgementPolicy = Field(default_factory=AcknowledgementPolicy)

    @model_validator(mode="after")
    def _complete(self) -> Routing:
        missing = [s.value for s in Severity if s not in self.severities]
        if missing:
            raise ValueError(f"severities is missing {', '.join(missing)}")
        problem = self.critical_guard_problem()
        if problem:
            raise ValueError(problem)
        return self

    def climb(self, severity: Severity) -> list[Tier]:
        """Tiers the escalator may add, in order, above those the severity notifies at once."""
        route = self.severities[severity]
        if route.escalate_up_to is None or route.escalate_up_to not in self.escalation_ladder:
            return []
        top = self.escalation_ladder.index(route.escalate_up_to)
        told = [
            self.escalation_ladder.index(t) for t in route.notify if t in self.escalation_ladder
        ]
        start = max(told) + 1 if told else 0
        return [t for t in self.escalation_ladder[start : top + 1] if t not in route.notify]

    def critical_guard_problem(self) -> str | None:
        """Why a critical incident could stay unacknowledged by police past the legal limit
        without every tier told; None when the ladder and deadlines cannot let that happen."""
        route = self.severities[Severity.critical]
        reached = set(route.notify) | set(self.climb(Severity.critical))
        missing = [t.value for t in Tier if t not in reached]
        if missing:
            return (
                "severities.critical: a critical incident must reach every tier, but "
                f"{', '.join(missing)} is neither in notify nor reachable by the escalation_ladder "
                "up to escalate_up_to (set escalate_up_to: police or notify every tier)"
            )
        steps = len(self.climb(Severity.critical))
        limit = self.acknowledgement.critical_all_tiers_within
        if steps * route.ack_within > limit:
            return (
                f"severities.critical: reaching every tier takes {steps} step(s) of "
                f"{format_duration(route.ack_within)}, more than the legal "
                f"{format_duration(limit)} (acknowledgement.critical_all_tiers_within)"
            )
        return None


class Policy(Routing):
    """The whole policy file: routing plus the classification rules."""

    classification: ClassificationRules = Field(default_factory=ClassificationRules)
