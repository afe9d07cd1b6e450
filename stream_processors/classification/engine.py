"""The rule-based classifier: report in, severity and category out, with the reasons why.

Everything that can be prepared from the policy is prepared in ``Classifier.__init__``: phrases
become token-key sequences in one shared index, so classifying a report is one pass over its
tokens plus a look at the few rules whose phrases occurred.

Safety bias (POLICY.md): the highest severity any signal supports wins; the reporter's category
hint is a floor, never lowered by the text; "a child is in immediate danger" makes the report
critical. A critical signal cancelled only by a negation is still shown to a human.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.common import SEVERITY_RANK, Category, Severity
from schemas.incidents import DANGER_WITHOUT_RULE, Decision
from schemas.policy import Policy
from schemas.reports import ReportIn
from schemas.rules import Rule
from schemas.yaml_loader import content_version
from stream_processors.classification.normalize import (
    FOLDED,
    Normalizer,
    PhraseSet,
    compile_phrases,
)

MAX_RULE_REASONS = 6

Span = tuple[int, int]
# An occurrence of a phrase: (start, end, phrase id), ``end`` exclusive.
_Occurrence = tuple[int, int, int]


@dataclass(frozen=True)
class _CompiledRule:
    """A rule with its phrases replaced by phrase ids."""

    rule: Rule
    order: int
    severity: Severity
    any: tuple[int, ...]
    all: tuple[tuple[int, ...], ...]
    unless: tuple[int, ...]

    def phrase_ids(self) -> set[int]:
        ids = set(self.any)
        for group in self.all:
            ids.update(group)
        return ids


@dataclass(frozen=True)
class _Hit:
    """A rule that fired, with its matched phrases (or, for a negated one, the cue)."""

    rule: _CompiledRule
    evidence: str


def _overlap_agrees(a: _Occurrence, b: _Occurrence, readings: list[tuple[str, ...]]) -> bool:
    """Two occurrences may share tokens only if they read each shared token as the same word.

    In text typed without accents one token can match different rule words ("anh" is both the
    man and "ảnh", the photo); a rule must not count it as both.
    """
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    if lo >= hi:
        return True
    ra, rb = readings[a[2]], readings[b[2]]
    return all(ra[i - a[0]] == rb[i - b[0]] for i in range(lo, hi))


def _pick(
    candidates: list[list[_Occurrence]],
    chosen: list[_Occurrence],
    readings: list[tuple[str, ...]],
) -> bool:
    """Choose one occurrence per group, each agreeing with those already chosen."""
    if len(chosen) == len(candidates):
        return True
    for occ in candidates[len(chosen)]:
        if all(_overlap_agrees(occ, other, readings) for other in chosen):
            chosen.append(occ)
            if _pick(candidates, chosen, readings):
                return True
            chosen.pop()
    return False


def _best_span(
    groups: list[list[_Occurrence]],
    within: int | None,
    readings: list[tuple[str, ...]],
) -> list[_Occurrence] | None:
    """One occurrence per group, all inside a window of ``within`` tokens and reading shared
    tokens alike; None when no such choice exists."""
    if within is None:
        chosen: list[_Occurrence] = []
        return chosen if _pick(groups, chosen, readings) else None
    for start in sorted({occ[0] for group in groups for occ in group}):
        limit = start + within
        candidates = [[o for o in g if o[0] >= start and o[1] <= limit] for g in groups]
        if all(candidates):
            chosen = []
            if _pick(candidates, chosen, readings):
                return chosen
    return None


class Classifier:
    """Compiled once from a policy; ``classify`` is pure and cheap."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.version = content_version(policy)
        rules = policy.classification
        self._category_severity = rules.category_severity
        self._danger_category = rules.immediate_danger_category
        self._norm = Normalizer(rules)
        self._phrases = PhraseSet()
        self._cues: dict[int, int] = {}
        for cue in rules.negation.cues:
            pid = self._norm.add_phrase(self._phrases, cue.phrase)
            self._cues[pid] = max(cue.window, self._cues.get(pid, 0))
        self._not_negation = set(
            compile_phrases(self._norm, self._phrases, rules.negation.not_negation)
        )
        self._rules: list[_CompiledRule] = []
        self._rules_by_phrase: dict[int, list[int]] = {}
        for order, rule in enumerate(rules.rules):
            compiled = _CompiledRule(
                rule=rule,
                order=order,
                severity=rule.severity or self._category_severity[rule.category],
                any=tuple(compile_phrases(self._norm, self._phrases, rule.any)),
                all=tuple(
                    tuple(compile_phrases(self._norm, self._phrases, group)) for group in rule.all
                ),
                unless=tuple(compile_phrases(self._norm, self._phrases, rule.unless)),
            )
            self._rules.append(compiled)
            # A rule is looked at only if a phrase it needs occurred: its `any` phrases, or
            # (without `any`) the phrases of its first `all` group.
            trigger = compiled.any or compiled.all[0]
            for pid in set(trigger):
                self._rules_by_phrase.setdefault(pid, []).append(order)
        # What each phrase reads each of its tokens as (its accented word or compound), so that
        # one rule never takes the same report token for two different words.
        self._readings: list[tuple[str, ...]] = [
            tuple(next(k for k in keys if not k.startswith(FOLDED)) for keys in seq)
            for seq in self._phrases.phrases
        ]

    # -- matching --------------------------------------------------------------------------

    def _negated(
        self,
        spans: list[tuple[int, int, int]],
        clauses: list[int],
    ) -> tuple[dict[int, list[Span]], dict[int, list[Span]], dict[int, str]]:
        """Split occurrences into live and negated ones; remember which cue negated what."""
        nn = [(s, e) for pid, s, e in spans if pid in self._not_negation]
        cues = [
            (s, e, self._cues[pid], pid)
            for pid, s, e in spans
            if pid in self._cues and not any(ns <= s and e <= ne for ns, ne in nn)
        ]
        live: dict[int, list[Span]] = {}
        dead: dict[int, list[Span]] = {}
        cue_of: dict[int, str] = {}
        for pid, s, e in spans:
            killer = None
            for cs, ce, window, cue_pid in cues:
                # The occurrence starts after the cue starts and ends after it ends: a phrase
                # may share the cue's last word ("không có ai bị" + "bị hack").
                if cs < s and ce < e and s - ce <= window and clauses[ce - 1] == clauses[s]:
                    killer = cue_pid
                    break
            if killer is None:
                live.setdefault(pid, []).append((s, e))
            else:
                dead.setdefault(pid, []).append((s, e))
                cue_of.setdefault(pid, self._phrases.texts[killer])
        return live, dead, cue_of

    def _match(self, rule: _CompiledRule, occ: dict[int, list[Span]]) -> str | None:
        """The evidence (rule phrases, never report text) if the rule's phrases occur."""
        evidence: list[str] = []
        if rule.any:
            found = next((pid for pid in rule.any if pid in occ), None)
            if found is None:
                return None
            evidence.append(self._phrases.texts[found])
        if rule.all:
            groups: list[list[_Occurrence]] = []
            for group in rule.all:
                occurrences = [(s, e, pid) for pid in group for s, e in occ.get(pid, ())]
                if not occurrences:
                    return None
                groups.append(occurrences)
            chosen = _best_span(groups, rule.rule.within, self._readings)
            if chosen is None:
                return None
            evidence.extend(self._phrases.texts[pid] for _, _, pid in chosen)
        return " + ".join(evidence)

    @staticmethod
    def _when_ok(rule: Rule, report: ReportIn) -> bool:
        when = rule.when
        if when is None:
            return True
        if when.immediate_danger is not None and when.immediate_danger != report.immediate_danger:
            return False
        if when.category_hint and report.category_hint not in when.category_hint:
            return False
        return not (when.reporter_role and report.reporter_role not in when.reporter_role)

    # -- deciding --------------------------------------------------------------------------

    def classify(self, report: ReportIn) -> Decision:
        """Decide severity and category for one report; reasons never quote the report."""
        tokens = self._norm.tokens(report.description)
        spans = self._phrases.find(tokens.keys)
        live, dead, cue_of = self._negated(spans, tokens.clauses)
        everywhere = {pid: live.get(pid, []) + dead.get(pid, []) for pid in {*live, *dead}}

        candidates: set[int] = set()
        for pid in everywhere:
            candidates.update(self._rules_by_phrase.get(pid, ()))
        hits: list[_Hit] = []
        negated: list[_Hit] = []
        for order in sorted(candidates):
            rule = self._rules[order]
            if not self._when_ok(rule.rule, report):
                continue
            if any(pid in everywhere for pid in rule.unless):
                continue
            evidence = self._match(rule, live)
            if evidence is not None:
                hits.append(_Hit(rule, evidence))
            elif dead:
                evidence = self._match(rule, everywhere)
                if evidence is not None:
                    cue = next(
                        (cue_of[pid] for pid in rule.phrase_ids() if pid in cue_of), "a negation"
                    )
                    negated.append(_Hit(rule, cue))
        return self._decide(report, hits, negated)

    def _decide(
        self,
        report: ReportIn,
        hits: list[_Hit],
        negated: list[_Hit],
    ) -> Decision:
        reasons: list[str] = []
        review = False
        hits.sort(
            key=lambda h: (-SEVERITY_RANK[h.rule.severity], -h.rule.rule.weight, h.rule.order)
        )
        for hit in hits[:MAX_RULE_REASONS]:
            reasons.append(f"rule {hit.rule.rule.id} matched '{hit.evidence}'")
        if len(hits) > MAX_RULE_REASONS:
            reasons.append(f"and {len(hits) - MAX_RULE_REASONS} more rules")

        text_best = next((h for h in hits if h.rule.rule.category != Category.other), None)
        if text_best is None and hits:
            text_best = hits[0]
        severity = text_best.rule.severity if text_best else Severity.low
        category = text_best.rule.rule.category if text_best else Category.other
        if text_best is not None and text_best.rule.rule.review:
            review = True
            reasons.append(f"rule {text_best.rule.rule.id} asks for human review")

        hint = report.category_hint
        if hint is not None:
            reasons.append(f"category_hint={hint.value}")
            hint_severity = self._category_severity[hint]
            if text_best is None or SEVERITY_RANK[hint_severity] >= SEVERITY_RANK[severity]:
                # The reporter's pick holds unless the text shows something more severe.
                severity, category = hint_severity, hint
            if text_best is not None and text_best.rule.rule.category != hint:
                review = True
                reasons.append(f"text suggests {text_best.rule.rule.category.value}")

        if report.immediate_danger:
            reasons.append("immediate_danger ticked")
            if not any(h.rule.severity is Severity.critical for h in hits):
                # Recorded so triage can tell a tick the text backs from a tick alone.
                reasons.append(DANGER_WITHOUT_RULE)
            if severity != Severity.critical:
                severity = Severity.critical
            if category == Category.other:
                category = self._danger_category
                review = True
                reasons.append(
                    f"no evidence of the kind of danger; category {category.value} by policy"
                )

        for miss in negated:
            if SEVERITY_RANK[miss.rule.severity] > SEVERITY_RANK[severity]:
                review = True
                reasons.append(f"negated: rule {miss.rule.rule.id} ignored after '{miss.evidence}'")

        if not hits and hint is None and not report.immediate_danger:
            review = True
            reasons.append("no rule matched")

        return Decision(
            severity=severity,
            category=category,
            reasons=reasons,
            needs_review=review,
            rules_version=self.version,
        )
