"""The routing part of the escalation policy (operator-edited YAML, ESCALATE_POLICY_FILE)."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.common import Severity, Tier
from schemas.durations import Duration, format_duration
from schemas.grouping import GroupingPolicy
from schemas.incidents import DANGER_WITHOUT_RULE, Decision
from schemas.reports import ReportIn
from schemas.rules import ClassificationRules


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


class ReviewDesk(StrEnum):
    """Review recipients that are not a tier of the incident's own chain."""

    intake_desk = "intake_desk"  # the city office's intake desk (directory: intake_desk_emails)


class ReviewReason(StrEnum):
    """Why an incident went to triage; the first that applies, in this order."""

    danger_without_rule = "danger_without_rule"
    model_raised = "model_raised"
    needs_review = "needs_review"
    severity = "severity"


class ReviewStep(BaseModel):
    """One rung of the review ladder: who is asked next when nobody has reviewed in time."""

    model_config = ConfigDict(extra="forbid")

    tier: Tier
    only_if_danger_ticked: bool = Field(
        default=False,
        description="Skip this rung unless the reporter ticked immediate_danger.",
    )


def _default_review_ladder() -> list[ReviewStep]:
    return [
        ReviewStep(tier=Tier.city_office),
        ReviewStep(tier=Tier.police, only_if_danger_ticked=True),
    ]


def _default_review_desk() -> list[ReviewDesk | Tier]:
    return [ReviewDesk.intake_desk]


class ReviewPolicy(BaseModel):
    """Human triage of what the rule classifier may have got wrong.

    The rules miss indirect wording, and a miss lands in other/low, where only the school hears
    of it within a day. So a person at the city office looks at every report the policy selects
    here, within ``within``, and may set severity and category; a raise re-routes at once.
    """

    model_config = ConfigDict(extra="forbid")

    needs_review: bool = Field(
        default=True, description="Triage every decision the classifier flagged needs_review."
    )
    severities: list[Severity] = Field(
        default_factory=lambda: [Severity.low],
        description="Triage every decision of these severities, flagged or not.",
    )
    danger_without_rule: bool = Field(
        default=True,
        description="Triage a report whose reporter ticked immediate_danger when no matched "
        f"rule is critical on its own: the decision's reasons hold '{DANGER_WITHOUT_RULE}' "
        "(set by the classifier). The severity is then critical only because of the tick.",
    )
    recipients: list[ReviewDesk | Tier] = Field(
        default_factory=_default_review_desk,
        min_length=1,
        description="Who reviews: intake_desk (the city office's intake desk) and/or tiers, "
        "resolved for the incident's school like any notification.",
    )
    within: Duration = Field(
        default_factory=lambda: timedelta(minutes=30),
        description="How long the reviewers have (from receipt), and then each ladder rung.",
    )
    ladder: list[ReviewStep] = Field(
        default_factory=_default_review_ladder,
        description="Asked one after another, each after another `within`, while nobody has "
        "reviewed; rungs whose condition does not hold are skipped.",
    )

    @field_validator("within")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value

    @field_validator("ladder")
    @classmethod
    def _distinct(cls, value: list[ReviewStep]) -> list[ReviewStep]:
        tiers = [step.tier for step in value]
        twice = sorted({t.value for t in tiers if tiers.count(t) > 1})
        if twice:
            raise ValueError(f"names {', '.join(twice)} more than once")
        return value

    def reason(self, decision: Decision, report: ReportIn) -> ReviewReason | None:
        """Why this decision needs a person; None when it does not."""
        if (
            self.danger_without_rule
            and report.immediate_danger
            and DANGER_WITHOUT_RULE in decision.reasons
        ):
            return ReviewReason.danger_without_rule
        if decision.model_raised:
            return ReviewReason.model_raised  # always: a raise nobody confirmed is a guess
        if self.needs_review and decision.needs_review:
            return ReviewReason.needs_review
        if decision.severity in self.severities:
            return ReviewReason.severity
        return None


class SecondOpinionPolicy(BaseModel):
    """How the learned model's opinion combines with the rules' decision.

    The model never lowers the rules. When it alone rates a report higher, the incident takes
    the higher severity at once for every tier except ``withhold_until_review``, goes to triage
    with ``review_within``, and the withheld tiers hear of it only when a reviewer confirms it,
    or when nobody reviewed in time and the reporter ticked immediate danger. So the model can
    bring a report to the schools and offices sooner, but never wakes the police on its own.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Ask the model at all (when one is loaded).")
    raise_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The model rates a report at least S when its probabilities for S and "
        "every severity above S add up to this. Chosen from the figures in docs/CLASSIFIER.md; "
        "`escalate classify --evaluate FILE --model M` prints them for several values.",
    )
    category_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="When the rules say 'other', the model's category is taken if its "
        "probability reaches this.",
    )
    review_within: Duration = Field(
        default_factory=lambda: timedelta(minutes=10),
        description="Triage deadline (from receipt) for a report the model alone raised.",
    )
    withhold_until_review: list[Tier] = Field(
        default_factory=lambda: [Tier.police],
        description="Tiers a model-only raise reaches only after a reviewer confirms it "
        "(or nobody reviews in time and immediate danger was ticked).",
    )

    @field_validator("review_within")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value


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
    review: ReviewPolicy = Field(default_factory=ReviewPolicy)
    second_opinion: SecondOpinionPolicy = Field(default_factory=SecondOpinionPolicy)
    grouping: GroupingPolicy = Field(default_factory=GroupingPolicy)
    webhook_severities: list[Severity] = Field(
        default_factory=lambda: list(Severity),
        description="Severities whose notices also go to the organisations' webhooks "
        "(directory `webhooks`), besides the mail.",
    )
    telegram_severities: list[Severity] = Field(
        default_factory=lambda: [Severity.critical, Severity.high],
        description="Severities whose notices also alert the organisations' duty chats on "
        "Telegram (directory `telegram_chat_ids`), besides the mail.",
    )

    @model_validator(mode="after")
    def _complete(self) -> Routing:
        missing = [s.value for s in Severity if s not in self.severities]
        if missing:
            raise ValueError(f"severities is missing {', '.join(missing)}")
        problem = self.critical_guard_problem()
        if problem:
            raise ValueError(problem)
        return self

    def withheld(self, decision: Decision) -> list[Tier]:
        """Tiers a model-only raise keeps waiting for a reviewer: those the raised severity
        notifies at once, the rules' own severity would not, and the policy withholds."""
        view = decision.second_opinion
        if view is None or view.raised_from is None:
            return []
        now = self.severities[decision.severity].notify
        before = self.severities[view.raised_from].notify
        hold = self.second_opinion.withhold_until_review
        return [t for t in now if t in hold and t not in before]

    def first_tiers(self, decision: Decision) -> list[Tier]:
        """The tiers told at once about a fresh incident."""
        held = self.withheld(decision)
        return [t for t in self.severities[decision.severity].notify if t not in held]

    def review_within(self, reason: ReviewReason) -> timedelta:
        """Triage deadline: short for what only the model raised."""
        if reason is ReviewReason.model_raised:
            return self.second_opinion.review_within
        return self.review.within

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
