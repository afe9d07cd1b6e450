"""Rules, model and the higher of both, side by side on labelled reports.

The question this answers is whether a learned second opinion would catch what the rules miss
without waking the police for nothing, so the figures are about severity: critical recall,
under- and over-rated reports, and non-critical reports raised to critical. The combined column
takes the higher severity of the two, as the issue proposes; the model never lowers the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from schemas.common import SEVERITY_RANK, Severity
from schemas.policy import Policy
from stream_processors.classification.engine import Classifier
from stream_processors.classification.evaluate import LabelledReport
from stream_processors.classification.model import Example, TrainedModel, train

SYSTEMS = ("rules", "model", "higher of both")


@dataclass
class SeverityTally:
    """Severity figures for one system on one set of reports."""

    total: int = 0
    correct: int = 0
    under: int = 0
    over: int = 0
    raised_to_critical: int = 0  # non-critical reports rated critical
    support: dict[str, int] = field(default_factory=lambda: dict.fromkeys(Severity, 0))
    found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(Severity, 0))

    def add(self, expected: Severity, got: Severity) -> None:
        self.total += 1
        self.support[expected] += 1
        if got == expected:
            self.correct += 1
            self.found[expected] += 1
        elif SEVERITY_RANK[got] < SEVERITY_RANK[expected]:
            self.under += 1
        else:
            self.over += 1
        if got == Severity.critical and expected != Severity.critical:
            self.raised_to_critical += 1

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 1.0

    @property
    def critical_recall(self) -> float:
        support = self.support[Severity.critical]
        return self.found[Severity.critical] / support if support else 1.0


@dataclass
class Comparison:
    tallies: dict[str, SeverityTally] = field(
        default_factory=lambda: {name: SeverityTally() for name in SYSTEMS}
    )

    def add(self, expected: Severity, rules: Severity, model: Severity) -> None:
        higher = max(rules, model, key=lambda s: SEVERITY_RANK[s])
        for name, got in zip(SYSTEMS, (rules, model, higher), strict=True):
            self.tallies[name].add(expected, got)


def compare(
    rows: Iterable[LabelledReport],
    policy: Policy,
    model_for: Callable[[int], TrainedModel],
    into: Comparison | None = None,
) -> Comparison:
    """Classify every row with the rules and with ``model_for(row index)``."""
    classifier = Classifier(policy)
    result = into or Comparison()
    for i, row in enumerate(rows):
        rules = classifier.classify(row.report).severity
        model = Severity(model_for(i).predict(row.report.description).severity)
        result.add(row.severity, rules, model)
    return result


def examples(rows: Iterable[LabelledReport]) -> list[Example]:
    return [Example(r.report.description, r.severity.value, r.category.value) for r in rows]


def _constant(model: TrainedModel) -> Callable[[int], TrainedModel]:
    return lambda _i: model


def cross_validate(
    rows: Sequence[LabelledReport], policy: Policy, seed: int = 0, folds: int = 5
) -> Comparison:
    """Each row scored by a model trained on the other folds (stratified by severity).

    The rules are not trained on these rows in that sense, but they were tuned on them: their
    column is an in-sample figure, the model's is out-of-sample.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = [r.severity.value for r in rows]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    result = Comparison()
    for train_idx, test_idx in splitter.split(labels, labels):
        model = train(examples([rows[i] for i in train_idx]), seed)
        compare([rows[i] for i in test_idx], policy, _constant(model), into=result)
    return result


def _found(sev: Severity, support: int) -> Callable[[SeverityTally], str]:
    return lambda s: f"{s.found[sev]}/{support}"


def render(comparison: Comparison, title: str) -> str:
    t = comparison.tallies
    crit = t["rules"].support[Severity.critical]

    def row(label: str, cell: Callable[[SeverityTally], str]) -> str:
        return f"  {label:<30}" + "".join(f"{cell(t[name]):>16}" for name in SYSTEMS)

    lines = [
        f"{title}: {t['rules'].total} reports, {crit} critical",
        f"  {'':<30}" + "".join(f"{name:>16}" for name in SYSTEMS),
        row("critical found", lambda s: f"{s.found[Severity.critical]}/{crit}"),
        row("critical recall", lambda s: f"{s.critical_recall:.3f}"),
        row("severity accuracy", lambda s: f"{s.accuracy:.3f}"),
        row("under-rated", lambda s: str(s.under)),
        row("over-rated", lambda s: str(s.over)),
        row("non-critical raised to critical", lambda s: str(s.raised_to_critical)),
    ]
    for sev in list(Severity)[1:]:  # critical is the first row already
        lines.append(row(f"{sev.value} found", _found(sev, t["rules"].support[sev])))
    return "\n".join(lines) + "\n"
