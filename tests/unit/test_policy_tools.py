"""``escalate policy check`` and ``escalate policy show``."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.policy import Policy
from schemas.yaml_loader import content_version, load_yaml_model, parse_yaml_text
from stream_processors.classification.policy_tools import check_files, show_policy

DEFAULTS = Path(__file__).resolve().parents[2] / "escalate" / "defaults"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_yaml_model(DEFAULTS / "policy.yaml", Policy)


def test_default_files_are_valid() -> None:
    assert check_files([DEFAULTS / "policy.yaml", DEFAULTS / "directory.yaml"]) == []


def test_a_broken_policy_names_file_and_line(tmp_path: Path) -> None:
    text = (DEFAULTS / "policy.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if "category: self_harm" in line)
    lines[index] = lines[index].replace("self_harm", "selfharm")
    broken = tmp_path / "policy.yaml"
    broken.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = check_files([broken])
    assert problems
    assert problems[0].startswith(f"{broken}:{index + 1}:")


def test_directory_is_recognised_by_content(tmp_path: Path) -> None:
    directory = tmp_path / "anything.yaml"
    directory.write_text("city_office: {name: Sở, emails: []}\n", encoding="utf-8")
    problems = check_files([directory])
    assert problems
    assert all(p.startswith(f"{directory}:") for p in problems)
    assert any("city_office" in p for p in problems)
    assert not any("severities" in p for p in problems)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("severities: [\n  oops: {\n", encoding="utf-8")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just words\n", encoding="utf-8")
    problems = check_files([tmp_path / "absent.yaml", bad_yaml, scalar])
    assert len(problems) == 3
    assert "cannot read" in problems[0]
    assert problems[1].startswith(f"{bad_yaml}:") and "not valid YAML" in problems[1]
    assert problems[2].startswith(f"{scalar}:1:")


def test_show_round_trip_keeps_the_version(policy: Policy, tmp_path: Path) -> None:
    shown = show_policy(policy)
    saved = tmp_path / "shown.yaml"
    saved.write_text(shown, encoding="utf-8")
    again = load_yaml_model(saved, Policy)
    assert content_version(again) == content_version(policy)
    assert show_policy(again) == shown
    assert "không" in shown and "\\u" not in shown


def test_show_quotes_words_yaml_would_read_as_booleans() -> None:
    text = """
severities:
  critical: {notify: [school, district_office, city_office, police], ack_within: 15m}
  high: {notify: [school], ack_within: 1h}
  medium: {notify: [school], ack_within: 4h}
  low: {notify: [school], ack_within: 24h}
escalation_ladder: [school, police]
classification:
  rules:
  - {id: other.words, category: other, any: ["no", "off", "yes"]}
"""
    policy = parse_yaml_text(text, Policy, "p.yaml")
    again = parse_yaml_text(show_policy(policy), Policy, "shown.yaml")
    assert again.classification.rules[0].any == ["no", "off", "yes"]
    assert content_version(again) == content_version(policy)
