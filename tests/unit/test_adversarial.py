"""Reports typed without accents, full of syllables that fold onto violent words.

"ban" is bạn (friend), bán (sell) and bắn (shoot); "dam" is dám (dare) and đâm (stab); "danh" is
danh sách (list) and đánh (hit). ``tests/data/reports-adversarial.jsonl`` holds non-critical
reports built around such syllables, which must never reach the police, and critical reports in the
same unaccented style, which must. The last test folds every labelled report we have (strips the
accents, as a student typing on a phone without a Vietnamese keyboard would) and asks for the same
safety figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.common import Severity
from schemas.policy import Policy
from schemas.text import fold
from schemas.yaml_loader import load_yaml_model
from stream_processors.classification.evaluate import LabelledReport, evaluate, render_text
from tests.unit.test_classifier import DEFAULT_POLICY, DEV_CORPUS, HELDOUT, load_rows

ADVERSARIAL = Path(__file__).resolve().parents[1] / "data" / "reports-adversarial.jsonl"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_yaml_model(DEFAULT_POLICY, Policy)


@pytest.fixture(scope="module")
def rows() -> list[LabelledReport]:
    return load_rows(ADVERSARIAL)


def test_the_set_is_big_enough(rows: list[LabelledReport]) -> None:
    critical = [r for r in rows if r.severity == Severity.critical]
    assert len(rows) - len(critical) >= 40
    assert len(critical) >= 15


def test_no_police_false_positive(rows: list[LabelledReport], policy: Policy) -> None:
    result = evaluate(rows, policy)
    assert result.non_critical_to_police == 0, render_text(result)


def test_every_critical_row_stays_critical(rows: list[LabelledReport], policy: Policy) -> None:
    result = evaluate(rows, policy)
    assert result.critical_recall == 1.0, render_text(result)


def test_category_accuracy(rows: list[LabelledReport], policy: Policy) -> None:
    result = evaluate(rows, policy)
    assert result.category_accuracy >= 0.85, render_text(result)


def _folded(row: LabelledReport) -> LabelledReport:
    report = row.report.model_copy(update={"description": fold(row.report.description)})
    return LabelledReport(
        line=row.line, report=report, severity=row.severity, category=row.category
    )


def test_every_labelled_report_typed_without_accents(policy: Policy) -> None:
    """The same reports with their accents stripped: no critical lost, none added."""
    rows = [_folded(r) for path in (DEV_CORPUS, HELDOUT, ADVERSARIAL) for r in load_rows(path)]
    assert len(rows) >= 200
    result = evaluate(rows, policy)
    text = render_text(result)
    assert result.critical_recall == 1.0, text
    assert result.non_critical_to_police == 0, text
    assert result.severity_accuracy >= 0.95, text
    assert result.category_accuracy >= 0.9, text
