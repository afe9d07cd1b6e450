"""Reports written independently of the rules, in many voices, held to the safety bars.

``tests/data/reports-generalisation.jsonl`` was written before the rules it measures were tuned:
children, parents and teachers describing every category in their own words, on many platforms,
with and without diacritics, in chat shorthand and English, with negations and scary words in
harmless reports. It was written in eight batches (the fifth: harmless reports around the new
cue words; the sixth: two 30-report probes, one half harmless; the seventh and eighth: 50
students' chat messages and 50 parents' and teachers' reports); each was measured blind first
(see the Results in docs/CLASSIFIER.md) and then used to broaden or narrow the rules, so these
figures are no longer blind. Add new rows the same way:
write them, measure, then fix the rules in general terms.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.common import Severity
from schemas.policy import Policy
from schemas.text import fold
from schemas.yaml_loader import load_yaml_model
from stream_processors.classification.evaluate import LabelledReport, evaluate, render_text
from tests.unit.test_classifier import DEFAULT_POLICY, load_rows

GENERALISATION = Path(__file__).resolve().parents[1] / "data" / "reports-generalisation.jsonl"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_yaml_model(DEFAULT_POLICY, Policy)


@pytest.fixture(scope="module")
def rows() -> list[LabelledReport]:
    return load_rows(GENERALISATION)


def test_the_set_covers_every_category(rows: list[LabelledReport]) -> None:
    assert len(rows) >= 120
    assert len({r.category for r in rows}) == 11
    assert sum(r.severity == Severity.critical for r in rows) >= 40


def test_safety_bars(rows: list[LabelledReport], policy: Policy) -> None:
    result = evaluate(rows, policy)
    text = render_text(result)
    assert result.critical_recall == 1.0, text
    # Four accepted false alarms (about 1 in 100 reports), each kept because the rule change that
    # would silence it would also miss a real case:
    # - a child shown a clip of someone's suicide (harmful_content; "tự sát" makes it self_harm;
    #   dropping "clip"/"video" near it would also drop "em xem clip xong muốn tự sát");
    # - "tao giet may" said as a joke, and "giết nó đi, bắn chết nó" shouted while playing a
    #   shooting game (a joke or a game named elsewhere in the report cannot cancel a threat);
    # - a rumour of a stranger "dụ dỗ" children, denied in the next clause.
    assert result.non_critical_to_police <= 4, text
    assert result.severity_accuracy >= 0.95, text
    assert result.category_accuracy >= 0.95, text


def test_the_same_reports_typed_without_accents(rows: list[LabelledReport], policy: Policy) -> None:
    folded = [
        LabelledReport(
            line=r.line,
            report=r.report.model_copy(update={"description": fold(r.report.description)}),
            severity=r.severity,
            category=r.category,
        )
        for r in rows
    ]
    result = evaluate(folded, policy)
    text = render_text(result)
    assert result.critical_recall == 1.0, text
    assert result.non_critical_to_police <= 4, text
    assert result.severity_accuracy >= 0.9, text
    assert result.category_accuracy >= 0.9, text
