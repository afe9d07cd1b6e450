"""The rules' decision and the model's opinion, combined as the policy says.

Pure: ``combine`` takes a decision and an opinion and returns the decision the pipeline acts on.
The model never lowers the rules. When it alone rates the report higher, the decision takes its
severity, is flagged for review and records where it came from (``ModelView.raised_from``), so
routing can hold back the tiers the policy reserves for a confirmed report (the police) and the
escalator can send it to triage with the short deadline. When the rules found no category, the
model's is taken if it is confident enough.

``Judge`` is what the processors call: the rules, plus the model when one is loaded. A model
that fails on one report leaves that report to the rules; it never stops classification.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from schemas.common import SEVERITY_RANK, Category, Severity
from schemas.incidents import Decision, ModelView
from schemas.policy import Policy, SecondOpinionPolicy
from schemas.reports import ReportIn
from stream_processors.classification.engine import Classifier
from stream_processors.classification.model import ModelOpinion, TrainedModel

log = logging.getLogger("escalate.classify")

#: Severities from lowest to highest: the model's probabilities are read on this scale.
ORDER = sorted(Severity, key=lambda s: SEVERITY_RANK[s])
TOP_FEATURES = 4


def explain(view: ModelView) -> str:
    """The reason line a reviewer reads: ``model: critical 0.83 — "anh ay", "gui anh"``."""
    words = ", ".join(f'"{f}"' for f in view.features)
    line = f"model: {view.severity.value} {view.probability:.2f}"
    return f"{line} — {words}" if words else line


def combine(
    decision: Decision, opinion: ModelOpinion, policy: SecondOpinionPolicy, model_version: str
) -> Decision:
    """The decision to act on, given the rules' ``decision`` and the model's ``opinion``."""
    model_severity = Severity(opinion.severity)
    raised = SEVERITY_RANK[model_severity] > SEVERITY_RANK[decision.severity]
    proposed = (
        decision.category is Category.other
        and opinion.category != Category.other.value
        and opinion.category_probability >= policy.category_threshold
    )
    view = ModelView(
        model_version=model_version,
        severity=model_severity,
        probability=round(opinion.severity_probability, 4),
        category=Category(opinion.category),
        category_probability=round(opinion.category_probability, 4),
        features=opinion.top_features,
        raised_from=decision.severity if raised else None,
        category_from=decision.category if proposed else None,
    )
    reasons = [*decision.reasons, explain(view)]
    update: dict[str, object] = {"model_version": model_version, "second_opinion": view}
    if raised:
        reasons.append(
            f"model alone rates it {model_severity.value} (rules: {decision.severity.value}); "
            "a reviewer confirms before the tiers held back by policy are told"
        )
        update.update(severity=model_severity, needs_review=True)
    if proposed:
        reasons.append(
            f"category {opinion.category} proposed by the model "
            f"({opinion.category_probability:.2f}); the rules found none"
        )
        update["category"] = Category(opinion.category)
    update["reasons"] = reasons
    return decision.model_copy(update=update)


@dataclass
class Judge:
    """The rules, and the model beside them when one is loaded and the policy enables it."""

    classifier: Classifier
    model: TrainedModel | None = None
    model_failures: int = field(default=0)

    @property
    def policy(self) -> Policy:
        return self.classifier.policy

    @property
    def model_version(self) -> str | None:
        return self.model.model_version if self.model is not None else None

    def opinion(self, report: ReportIn) -> ModelOpinion | None:
        """The model's opinion, or None when there is no model or it failed on this report."""
        if self.model is None or not self.policy.second_opinion.enabled:
            return None
        try:
            return self.model.predict(
                report.description,
                top=TOP_FEATURES,
                order=[s.value for s in ORDER],
                threshold=self.policy.second_opinion.raise_threshold,
            )
        except Exception as exc:  # a model bug must not cost the report its classification
            self.model_failures += 1
            log.error("model failed on a report (%s); the rules decide alone", type(exc).__name__)
            return None

    def classify(self, report: ReportIn) -> Decision:
        decision = self.classifier.classify(report)
        opinion = self.opinion(report)
        if opinion is None or self.model is None:
            return decision
        return combine(decision, opinion, self.policy.second_opinion, self.model.model_version)
