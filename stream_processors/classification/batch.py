"""The core of ``escalate classify``: JSON lines in, one decision (or error) per line out.

A bad line never stops the batch: it gets an ``{"error", "line"}`` object in its place, so an
operator can fix the input and rerun. Errors name the field and the problem, never the text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from schemas.common import Category, Severity
from schemas.policy import Policy
from schemas.reports import ReportIn
from stream_processors.classification.engine import Classifier
from stream_processors.classification.evaluate import LabelledReport, evaluate, render_text


class BadLine(ValueError):
    """A line that cannot be used; the message is safe to print (no report text)."""


def _describe(exc: ValidationError) -> str:
    """Field and message of each problem, without pydantic's echo of the input value."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(report)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _parse(line: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadLine(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(data, dict):
        raise BadLine("expected a JSON object")
    return data


def parse_report(line: str) -> ReportIn:
    """A report object, or an object whose ``report`` field is one (as in labelled files)."""
    data = _parse(line)
    inner = data.get("report")
    payload = inner if isinstance(inner, dict) else data
    try:
        return ReportIn.model_validate(payload)
    except ValidationError as exc:
        raise BadLine(f"invalid report: {_describe(exc)}") from None


def parse_labelled(line: str, number: int) -> LabelledReport:
    """A row ``{"report": {...}, "expect": {"severity", "category"}}``."""
    data = _parse(line)
    report = parse_report(line)
    expect = data.get("expect")
    if not isinstance(expect, dict):
        raise BadLine("missing 'expect' object with severity and category")
    try:
        severity = Severity(str(expect.get("severity")))
        category = Category(str(expect.get("category")))
    except ValueError as exc:
        raise BadLine(f"bad label: {exc}") from None
    return LabelledReport(line=number, report=report, severity=severity, category=category)


def _numbered(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers (blank lines carry no report)."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line


def classify_stream(lines: Iterable[str], policy: Policy, out: TextIO) -> int:
    """Write one JSON line per non-blank input line; 1 if any line was bad, else 0."""
    classifier = Classifier(policy)
    notify = {sev: [t.value for t in route.notify] for sev, route in policy.severities.items()}
    status = 0
    for number, line in _numbered(lines):
        try:
            report = parse_report(line)
        except BadLine as exc:
            status = 1
            out.write(json.dumps({"error": str(exc), "line": number}) + "\n")
            continue
        decision = classifier.classify(report)
        result = {
            "severity": decision.severity.value,
            "category": decision.category.value,
            "notify": notify[decision.severity],
            "reasons": decision.reasons,
            "needs_review": decision.needs_review,
            "rules_version": decision.rules_version,
        }
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
    return status


def evaluate_file(path: Path, policy: Policy, out: TextIO) -> int:
    """Print the evaluation of a labelled file; 1 when a critical report was missed.

    Unreadable rows are listed and also make the result 1: an evaluation that skipped rows
    could hide a miss.
    """
    rows: list[LabelledReport] = []
    problems: list[str] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in _numbered(fh):
                try:
                    rows.append(parse_labelled(line, number))
                except BadLine as exc:
                    problems.append(f"{path}:{number}: {exc}")
    except (OSError, UnicodeDecodeError) as exc:
        out.write(f"{path}: cannot read: {exc}\n")
        return 1
    result = evaluate(rows, policy)
    out.write(render_text(result))
    for problem in problems:
        out.write(problem + "\n")
    return 1 if result.critical_recall < 1.0 or problems else 0
