"""A broken rules file is refused, and the message points at the line to fix."""

from __future__ import annotations

import pytest

from schemas.common import Category, Severity
from schemas.policy import Policy
from schemas.rules import ClassificationRules
from schemas.yaml_loader import ConfigError, parse_yaml_text

ROUTING = """\
severities:
  critical: {notify: [school, district_office, city_office, police], ack_within: 15m}
  high: {notify: [school, district_office], ack_within: 1h}
  medium: {notify: [school], ack_within: 4h}
  low: {notify: [school], ack_within: 24h}
escalation_ladder: [school, district_office, city_office, police]
classification:
  rules:
  - id: self_harm.intent
    category: self_harm
    any: [tự tử]
"""
# ROUTING has 11 lines; a rule appended below starts on line 12.


def refuse(extra: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_yaml_text(ROUTING + extra, Policy, "policy.yaml")
    return str(info.value)


def test_the_base_file_is_valid() -> None:
    policy = parse_yaml_text(ROUTING, Policy, "policy.yaml")
    assert policy.classification.rules[0].id == "self_harm.intent"


def test_unknown_category_names_the_line() -> None:
    message = refuse("  - id: bad.cat\n    category: bullying\n    any: [chửi]\n")
    assert "policy.yaml:13:" in message
    assert "category" in message


def test_misspelt_key_is_refused() -> None:
    message = refuse("  - id: typo.key\n    category: fraud\n    anyy: [lừa]\n")
    assert "policy.yaml:14:" in message
    assert "anyy" in message


def test_empty_phrase_is_refused() -> None:
    message = refuse("  - id: empty.phrase\n    category: fraud\n    any: ['  ', lừa]\n")
    assert "policy.yaml:14:" in message
    assert "at least one letter" in message


def test_rule_without_phrases_is_refused() -> None:
    message = refuse("  - id: no.phrases\n    category: fraud\n")
    assert "policy.yaml:12:" in message
    assert "needs phrases" in message


def test_empty_all_group_is_refused() -> None:
    message = refuse("  - id: empty.group\n    category: fraud\n    all: [[lừa], []]\n")
    assert "empty group" in message


def test_duplicate_ids_are_refused() -> None:
    message = refuse("  - id: self_harm.intent\n    category: self_harm\n    any: [tự sát]\n")
    assert "duplicate rule id 'self_harm.intent'" in message
    assert "policy.yaml:8:" in message


def test_bare_yaml_boolean_gets_a_helpful_message() -> None:
    message = refuse("  - id: yaml.bool\n    category: other\n    any: [no]\n")
    assert "policy.yaml:14:" in message
    assert "quotes" in message


def test_within_needs_two_groups() -> None:
    message = refuse("  - id: lone.group\n    category: fraud\n    all: [[lừa]]\n    within: 3\n")
    assert "within" in message


def test_bad_rule_id_and_severity() -> None:
    message = refuse("  - id: Bad Id\n    category: fraud\n    severity: urgent\n    any: [x]\n")
    assert "policy.yaml:12:" in message
    assert "policy.yaml:14:" in message


def test_lexicon_keys_are_single_words() -> None:
    with pytest.raises(ValueError, match="one word"):
        ClassificationRules.model_validate({"lexicon": {"k o": "không"}})


def test_category_severity_must_be_complete() -> None:
    with pytest.raises(ValueError, match="missing"):
        ClassificationRules.model_validate({"category_severity": {"other": "low"}})


def test_defaults_follow_the_policy_document() -> None:
    rules = ClassificationRules()
    assert rules.category_severity[Category.sexual_exploitation] == Severity.critical
    assert rules.category_severity[Category.fraud] == Severity.medium
    assert rules.category_severity[Category.other] == Severity.low


def test_ambiguous_folded_takes_unaccented_syllables() -> None:
    policy = parse_yaml_text(ROUTING + "  ambiguous_folded: [ban, dam]\n", Policy, "policy.yaml")
    assert policy.classification.ambiguous_folded == ["ban", "dam"]


def test_ambiguous_folded_refuses_an_accented_word() -> None:
    message = refuse("  ambiguous_folded: [ban, bắn]\n")
    assert "policy.yaml:12:" in message
    assert "without accents" in message


def test_ambiguous_folded_refuses_phrases_and_duplicates() -> None:
    assert "one word" in refuse("  ambiguous_folded: [ban chet]\n")
    assert "twice" in refuse("  ambiguous_folded: [ban, dam, ban]\n")
