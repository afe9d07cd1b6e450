"""``escalate classify``: one output line per input line, bad lines reported and skipped."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from schemas.policy import Policy
from schemas.yaml_loader import content_version, load_yaml_model, parse_yaml_text
from stream_processors.classification.batch import classify_stream, evaluate_file

REPO = Path(__file__).resolve().parents[2]
DEV_CORPUS = REPO / "tests" / "data" / "reports-dev.jsonl"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_yaml_model(REPO / "escalate" / "defaults" / "policy.yaml", Policy)


def report(text: str, **extra: object) -> dict[str, object]:
    return {
        "channel": "app",
        "reporter_role": "student",
        "school_code": "HN-T-1",
        "description": text,
        **extra,
    }


def run(lines: list[str], policy: Policy) -> tuple[int, list[dict[str, object]]]:
    out = io.StringIO()
    code = classify_stream(lines, policy, out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_good_lines(policy: Policy) -> None:
    lines = [
        json.dumps(report("ban ay noi se tu tu")) + "\n",
        json.dumps({"report": report("cả lớp tẩy chay em"), "expect": {}}, ensure_ascii=False),
    ]
    code, results = run(lines, policy)
    assert code == 0
    first, second = results
    assert first["severity"] == "critical"
    assert first["category"] == "self_harm"
    assert first["notify"] == ["school", "district_office", "city_office", "police"]
    assert first["rules_version"] == content_version(policy)
    assert first["needs_review"] is False
    assert second["notify"] == ["school", "district_office"]
    assert set(first) == {
        "severity",
        "category",
        "notify",
        "reasons",
        "needs_review",
        "rules_version",
    }


def test_bad_lines_are_reported_and_processing_goes_on(policy: Policy) -> None:
    lines = [
        "{not json secretword\n",
        json.dumps(report("lịch học tuần này", channel="pigeon")) + "\n",
        "\n",
        json.dumps(report("bạn ấy nói sẽ tự tử")) + "\n",
        "[1, 2]\n",
        json.dumps(report("x")) + "\n",
    ]
    code, results = run(lines, policy)
    assert code == 1
    assert [r.get("line") for r in results] == [1, 2, None, 5, 6]
    assert "not valid JSON" in str(results[0]["error"])
    assert "channel" in str(results[1]["error"])
    assert results[2]["severity"] == "critical"
    assert "JSON object" in str(results[3]["error"])
    assert "description" in str(results[4]["error"])
    assert not any("secretword" in str(r) or "pigeon" in str(r) for r in results)


def test_evaluate_file_on_the_dev_corpus(policy: Policy) -> None:
    assert DEV_CORPUS.is_file(), f"dev corpus not found at {DEV_CORPUS}"
    out = io.StringIO()
    assert evaluate_file(DEV_CORPUS, policy, out) == 0
    assert "critical recall:         1.000" in out.getvalue()


def test_evaluate_file_fails_on_a_missed_critical(tmp_path: Path) -> None:
    bare = parse_yaml_text(
        """
severities:
  critical: {notify: [school, district_office, city_office, police], ack_within: 15m}
  high: {notify: [school], ack_within: 1h}
  medium: {notify: [school], ack_within: 4h}
  low: {notify: [school], ack_within: 24h}
escalation_ladder: [school, police]
""",
        Policy,
        "bare.yaml",
    )
    labelled = tmp_path / "rows.jsonl"
    row = {"report": report("bạn ấy nói sẽ tự tử"), "expect": {}}
    row["expect"] = {"severity": "critical", "category": "self_harm"}
    labelled.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    out = io.StringIO()
    assert evaluate_file(labelled, bare, out) == 1
    assert "critical recall:         0.000" in out.getvalue()


def test_evaluate_file_reports_bad_rows(tmp_path: Path, policy: Policy) -> None:
    labelled = tmp_path / "rows.jsonl"
    good = {
        "report": report("lịch học tuần sau"),
        "expect": {"severity": "low", "category": "other"},
    }
    bad = {"report": report("lịch học"), "expect": {"severity": "urgent", "category": "other"}}
    labelled.write_text(
        json.dumps(good, ensure_ascii=False) + "\n" + json.dumps(bad, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    out = io.StringIO()
    assert evaluate_file(labelled, policy, out) == 1
    assert f"{labelled}:2: bad label" in out.getvalue()


def test_evaluate_file_missing(tmp_path: Path, policy: Policy) -> None:
    out = io.StringIO()
    assert evaluate_file(tmp_path / "absent.jsonl", policy, out) == 1
    assert "cannot read" in out.getvalue()
