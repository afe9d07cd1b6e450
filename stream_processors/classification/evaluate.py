"""Measure the classifier against labelled reports, the way the policy will be judged.

The figures that matter most come first: critical recall (a missed critical report means the
police hear nothing for hours) and the count of non-critical reports that would wake the police.
Misses are listed by line number with the rules' reasons, never with the report text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.common import Category, Severity, Tier
from schemas.policy import Policy
from schemas.reports import ReportIn
from stream_processors.classification.engine import Classifier


@dataclass(frozen=True)
class LabelledReport:
    """One row of a labelled file: the report and what it should be classified as."""

    line: int
    report: ReportIn
    severity: Severity
    category: Category


@dataclass(frozen=True)
class Miss:
    line: int
    expected_severity: Severity
    expected_category: Category
    got_severity: Severity
    got_category: Category
    reasons: list[str]


@dataclass(frozen=True)
class ClassScore:
    """Precision and recall of one label; both are 1.0 when there is nothing to get wrong."""

    label: str
    support: int
    predicted: int
    correct: int

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.correct / self.support if self.support else 1.0


@dataclass
class EvaluationReport:
    total: int = 0
    severity_correct: int = 0
    category_correct: int = 0
    non_critical_to_police: int = 0
    needs_review: int = 0
    severity_scores: dict[str, ClassScore] = field(default_factory=dict)
    category_scores: dict[str, ClassScore] = field(default_factory=dict)
    severity_confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    category_confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    misses: list[Miss] = field(default_factory=list)
    rules_version: str = ""

    @property
    def severity_accuracy(self) -> float:
        return self.severity_correct / self.total if self.total else 1.0

    @property
    def category_accuracy(self) -> float:
        return self.category_correct / self.total if self.total else 1.0

    @property
    def critical_recall(self) -> float:
        score = self.severity_scores.get(Severity.critical.value)
        return score.recall if score else 1.0


def _scores(pairs: list[tuple[str, str]], labels: list[str]) -> dict[str, ClassScore]:
    out: dict[str, ClassScore] = {}
    for label in labels:
        support = sum(1 for exp, _ in pairs if exp == label)
        predicted = sum(1 for _, got in pairs if got == label)
        correct = sum(1 for exp, got in pairs if exp == label and got == label)
        out[label] = ClassScore(label, support, predicted, correct)
    return out


def _confusion(pairs: list[tuple[str, str]], labels: list[str]) -> dict[str, dict[str, int]]:
    matrix = {exp: dict.fromkeys(labels, 0) for exp in labels}
    for exp, got in pairs:
        matrix[exp][got] += 1
    return matrix


def evaluate(rows: Iterable[LabelledReport], policy: Policy) -> EvaluationReport:
    """Classify every row and compare with its labels."""
    classifier = Classifier(policy)
    police = {sev for sev, route in policy.severities.items() if Tier.police in route.notify}
    result = EvaluationReport(rules_version=classifier.version)
    sev_pairs: list[tuple[str, str]] = []
    cat_pairs: list[tuple[str, str]] = []
    for row in rows:
        decision = classifier.classify(row.report)
        result.total += 1
        sev_pairs.append((row.severity.value, decision.severity.value))
        cat_pairs.append((row.category.value, decision.category.value))
        sev_ok = decision.severity == row.severity
        cat_ok = decision.category == row.category
        result.severity_correct += sev_ok
        result.category_correct += cat_ok
        result.needs_review += decision.needs_review
        if decision.severity in police and row.severity not in police:
            result.non_critical_to_police += 1
        if not (sev_ok and cat_ok):
            result.misses.append(
                Miss(
                    row.line,
                    row.severity,
                    row.category,
                    decision.severity,
                    decision.category,
                    decision.reasons,
                )
            )
    severities = [s.value for s in Severity]
    categories = [c.value for c in Category]
    result.severity_scores = _scores(sev_pairs, severities)
    result.category_scores = _scores(cat_pairs, categories)
    result.severity_confusion = _confusion(sev_pairs, severities)
    result.category_confusion = _confusion(cat_pairs, categories)
    return result


def _matrix_text(title: str, matrix: dict[str, dict[str, int]], short: int) -> list[str]:
    labels = list(matrix)
    width = max(len(label) for label in labels)
    head = " ".join(f"{label[:short]:>{short}}" for label in labels)
    lines = [f"{title} (rows: expected, columns: got)", f"  {'':<{width}} {head}"]
    for exp in labels:
        cells = " ".join(f"{matrix[exp][got]:>{short}}" for got in labels)
        lines.append(f"  {exp:<{width}} {cells}")
    return lines


def render_text(report: EvaluationReport) -> str:
    """A plain-text evaluation for a terminal or a CI log."""
    lines = [
        f"rules version:           {report.rules_version}",
        f"reports:                 {report.total}",
        f"critical recall:         {report.critical_recall:.3f}",
        f"non-critical to police:  {report.non_critical_to_police}",
        f"severity accuracy:       {report.severity_accuracy:.3f}",
        f"category accuracy:       {report.category_accuracy:.3f}",
        f"flagged for review:      {report.needs_review}",
        "",
        "per severity              precision  recall  support",
    ]
    for score in report.severity_scores.values():
        lines.append(
            f"  {score.label:<22} {score.precision:>9.3f} {score.recall:>7.3f} {score.support:>8}"
        )
    lines += ["", "per category              precision  recall  support"]
    for score in report.category_scores.values():
        lines.append(
            f"  {score.label:<22} {score.precision:>9.3f} {score.recall:>7.3f} {score.support:>8}"
        )
    lines.append("")
    lines += _matrix_text("severity confusion", report.severity_confusion, 8)
    lines.append("")
    lines += _matrix_text("category confusion", report.category_confusion, 5)
    lines.append("")
    if report.misses:
        lines.append(f"misses ({len(report.misses)}):")
        for miss in report.misses:
            lines.append(
                f"  line {miss.line}: expected {miss.expected_severity.value}/"
                f"{miss.expected_category.value}, got {miss.got_severity.value}/"
                f"{miss.got_category.value}"
            )
            lines.extend(f"      - {reason}" for reason in miss.reasons)
    else:
        lines.append("misses: none")
    return "\n".join(lines) + "\n"
