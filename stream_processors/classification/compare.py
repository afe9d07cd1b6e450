"""Rules, model and the combination the pipeline uses, side by side on labelled reports.

The question this answers is whether the learned second opinion catches what the rules miss
without waking the police for nothing. "combined" is exactly what the processors decide
(``second_opinion.Judge`` with the policy's ``second_opinion`` section): the model never lowers
the rules, a model-only raise takes the higher severity but reaches the tiers the policy holds
back (the police) only after a person confirms it, and the model's category is taken where the
rules found none. So "police told at once" counts, for each system, the reports whose first
notice would reach the police, and for "combined" it cannot exceed the rules' count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from schemas.common import SEVERITY_RANK, Category, Severity, Tier
from schemas.incidents import Decision
from schemas.policy import Policy
from stream_processors.classification.engine import Classifier
from stream_processors.classification.evaluate import LabelledReport
from stream_processors.classification.model import Example, TrainedModel, train
from stream_processors.classification.second_opinion import ORDER, Judge

SYSTEMS = ("rules", "model", "combined")
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


@dataclass
class Tally:
    """Severity and category figures for one system on one set of reports."""

    total: int = 0
    correct: int = 0
    under: int = 0
    over: int = 0
    raised_to_critical: int = 0  # non-critical reports rated critical
    police_at_once: int = 0  # reports whose first notice reaches the police
    police_false_alarms: int = 0  # ... of which not critical
    to_triage_by_model: int = 0
    category_correct: int = 0
    support: dict[str, int] = field(default_factory=lambda: dict.fromkeys(Severity, 0))
    found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(Severity, 0))
    category_support: dict[str, int] = field(default_factory=lambda: dict.fromkeys(Category, 0))
    category_found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(Category, 0))

    def add(
        self,
        row: LabelledReport,
        severity: Severity,
        category: Category,
        police: bool,
        model_raised: bool = False,
    ) -> None:
        expected = row.severity
        self.total += 1
        self.support[expected] += 1
        if severity == expected:
            self.correct += 1
            self.found[expected] += 1
        elif SEVERITY_RANK[severity] < SEVERITY_RANK[expected]:
            self.under += 1
        else:
            self.over += 1
        if severity == Severity.critical and expected != Severity.critical:
            self.raised_to_critical += 1
        if police:
            self.police_at_once += 1
            self.police_false_alarms += expected != Severity.critical
        self.to_triage_by_model += model_raised
        self.category_support[row.category] += 1
        if category == row.category:
            self.category_correct += 1
            self.category_found[row.category] += 1

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 1.0

    @property
    def category_accuracy(self) -> float:
        return self.category_correct / self.total if self.total else 1.0

    @property
    def critical_recall(self) -> float:
        support = self.support[Severity.critical]
        return self.found[Severity.critical] / support if support else 1.0


@dataclass
class SweepPoint:
    """One candidate threshold: what the combination would catch and send to triage."""

    critical_found: int = 0
    raised_to_critical: int = 0
    model_raises: int = 0


@dataclass
class Comparison:
    threshold: float = 0.5
    tallies: dict[str, Tally] = field(default_factory=lambda: {n: Tally() for n in SYSTEMS})
    sweep: dict[float, SweepPoint] = field(
        default_factory=lambda: {t: SweepPoint() for t in THRESHOLDS}
    )


def _police(policy: Policy, decision: Decision) -> bool:
    return Tier.police in policy.first_tiers(decision)


def compare(
    rows: Iterable[LabelledReport],
    policy: Policy,
    model_for: Callable[[int], TrainedModel],
    into: Comparison | None = None,
) -> Comparison:
    """Score every row with the rules, ``model_for(row index)`` alone, and the combination."""
    rules = Classifier(policy)
    threshold = policy.second_opinion.raise_threshold
    result = into or Comparison(threshold=threshold)
    order = [s.value for s in ORDER]
    t = result.tallies
    for i, row in enumerate(rows):
        model = model_for(i)
        text = row.report.description
        by_rules = rules.classify(row.report)
        t["rules"].add(row, by_rules.severity, by_rules.category, _police(policy, by_rules))
        alone = model.predict(text, order=order, threshold=threshold)
        alone_sev = Severity(alone.severity)
        t["model"].add(row, alone_sev, Category(alone.category), alone_sev == Severity.critical)
        combined = Judge(rules, model).classify(row.report)
        t["combined"].add(
            row,
            combined.severity,
            combined.category,
            _police(policy, combined),
            combined.model_raised,
        )
        for cut, point in result.sweep.items():
            sev = Severity(model.predict(text, top=0, order=order, threshold=cut).severity)
            higher = max(by_rules.severity, sev, key=lambda s: SEVERITY_RANK[s])
            point.model_raises += higher != by_rules.severity
            if row.severity == Severity.critical:
                point.critical_found += higher == Severity.critical
            else:
                point.raised_to_critical += higher == Severity.critical
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
    result = Comparison(threshold=policy.second_opinion.raise_threshold)
    for train_idx, test_idx in splitter.split(labels, labels):
        model = train(examples([rows[i] for i in train_idx]), seed)
        compare([rows[i] for i in test_idx], policy, _constant(model), into=result)
    return result


def _severity_found(sev: Severity, support: int) -> Callable[[Tally], str]:
    return lambda s: f"{s.found[sev]}/{support}"


def _category_found(cat: Category, support: int) -> Callable[[Tally], str]:
    return lambda s: f"{s.category_found[cat]}/{support}"


def render(comparison: Comparison, title: str) -> str:
    t = comparison.tallies
    crit = t["rules"].support[Severity.critical]

    def row(label: str, cell: Callable[[Tally], str]) -> str:
        return f"  {label:<34}" + "".join(f"{cell(t[name]):>12}" for name in SYSTEMS)

    lines = [
        f"{title}: {t['rules'].total} reports, {crit} critical; "
        f"model threshold {comparison.threshold:g} (policy second_opinion.raise_threshold)",
        f"  {'':<34}" + "".join(f"{name:>12}" for name in SYSTEMS),
        row("critical found", lambda s: f"{s.found[Severity.critical]}/{crit}"),
        row("critical recall", lambda s: f"{s.critical_recall:.3f}"),
        row("severity accuracy", lambda s: f"{s.accuracy:.3f}"),
        row("under-rated", lambda s: str(s.under)),
        row("over-rated", lambda s: str(s.over)),
        row("non-critical rated critical", lambda s: str(s.raised_to_critical)),
        row("police told at once", lambda s: str(s.police_at_once)),
        row("  of which not critical", lambda s: str(s.police_false_alarms)),
        row("sent to triage by the model", lambda s: str(s.to_triage_by_model)),
        row("category accuracy", lambda s: f"{s.category_accuracy:.3f}"),
    ]
    for sev in list(Severity)[1:]:  # critical is the first row already
        lines.append(row(f"{sev.value} found", _severity_found(sev, t["rules"].support[sev])))
    for cat in Category:
        support = t["rules"].category_support[cat]
        if support:
            lines.append(row(f"category {cat.value}", _category_found(cat, support)))
    lines.append(
        "  threshold sweep (rules with the model at each threshold): critical found / "
        "non-critical rated critical / sent to triage by the model"
    )
    for cut, point in comparison.sweep.items():
        mark = "  <- policy" if abs(cut - comparison.threshold) < 1e-9 else ""
        lines.append(
            f"    {cut:.1f}: {point.critical_found}/{crit} / {point.raised_to_critical} / "
            f"{point.model_raises}{mark}"
        )
    return "\n".join(lines) + "\n"
