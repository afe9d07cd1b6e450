"""Evaluation figures: computed right, and never quoting report text."""

from __future__ import annotations

import pytest

from schemas.common import Category, Severity
from schemas.policy import Policy
from schemas.reports import ReportIn
from schemas.yaml_loader import parse_yaml_text
from stream_processors.classification.evaluate import (
    ClassScore,
    LabelledReport,
    evaluate,
    render_text,
)

POLICY = """
severities:
  critical: {notify: [school, district_office, city_office, police], ack_within: 15m}
  high: {notify: [school, district_office], ack_within: 1h}
  medium: {notify: [school], ack_within: 4h}
  low: {notify: [school], ack_within: 24h}
escalation_ladder: [school, district_office, city_office, police]
classification:
  rules:
  - {id: self_harm.intent, category: self_harm, any: [tự tử]}
  - {id: threat.kill, category: threat_of_violence, any: [giết]}
  - {id: bullying.words, category: cyberbullying, any: [chửi]}
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_yaml_text(POLICY, Policy, "policy.yaml")


def row(line: int, text: str, severity: Severity, category: Category) -> LabelledReport:
    report = ReportIn(
        channel="app", reporter_role="student", school_code="HN-T-1", description=text
    )
    return LabelledReport(line=line, report=report, severity=severity, category=category)


ROWS = [
    row(1, "bạn ấy nói sẽ tự tử", Severity.critical, Category.self_harm),
    row(2, "nó dọa đâm em secretword", Severity.critical, Category.threat_of_violence),
    row(3, "game này giết quái vui lắm", Severity.low, Category.other),
    row(4, "bạn ấy chửi em", Severity.high, Category.cyberbullying),
    row(5, "lịch học tuần sau", Severity.low, Category.other),
]


def test_figures(policy: Policy) -> None:
    result = evaluate(ROWS, policy)
    assert result.total == 5
    assert result.severity_correct == 3
    assert result.category_correct == 3
    assert result.severity_accuracy == pytest.approx(0.6)
    critical = result.severity_scores["critical"]
    assert (critical.support, critical.predicted, critical.correct) == (2, 2, 1)
    assert result.critical_recall == pytest.approx(0.5)
    assert result.non_critical_to_police == 1  # row 3: a game, routed to the police
    assert result.severity_confusion["critical"]["low"] == 1
    assert result.category_confusion["other"]["threat_of_violence"] == 1
    assert [m.line for m in result.misses] == [2, 3]


def test_scores_without_examples_are_not_penalised() -> None:
    empty = ClassScore("fraud", support=0, predicted=0, correct=0)
    assert (empty.precision, empty.recall) == (1.0, 1.0)


def test_text_report(policy: Policy) -> None:
    text = render_text(evaluate(ROWS, policy))
    assert "critical recall:         0.500" in text
    assert "non-critical to police:  1" in text
    assert "line 2: expected critical/threat_of_violence, got low/other" in text
    assert "severity confusion" in text and "category confusion" in text
    assert "secretword" not in text
    assert "dọa đâm" not in text


def test_no_rows(policy: Policy) -> None:
    result = evaluate([], policy)
    assert result.critical_recall == 1.0
    assert "misses: none" in render_text(result)
