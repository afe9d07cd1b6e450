"""Contracts: JSON Schema files in the repo match the models; ids and NFC behave."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas.export import render, schema_documents
from schemas.ids import event_id, incident_id_for_report, new_tracking_code
from schemas.incidents import Decision
from schemas.reports import ReportIn, ReportSubmitted
from schemas.topics import ALL_TOPICS
from stream_processors.classify_stage import open_incident
from tests.conftest import REPO

JSON_DIR = REPO / "schemas" / "json"


def test_exported_json_schemas_are_current() -> None:
    docs = schema_documents()
    on_disk = {p.name for p in JSON_DIR.glob("*.schema.json")}
    assert on_disk == set(docs), "run `make schemas` to regenerate schemas/json"
    for name, doc in docs.items():
        assert (JSON_DIR / name).read_text("utf-8") == render(doc), (
            f"{name} is stale: run `make schemas`"
        )


def test_topic_names_are_unique_and_versioned() -> None:
    names = [spec.base_name for spec in ALL_TOPICS]
    assert len(names) == len(set(names))
    assert all(name.endswith(".v1") for name in names)
    assert ALL_TOPICS[0].name("t1.") == "t1.reports.submitted.v1"


def test_report_text_is_nfc_and_unknown_fields_are_refused() -> None:
    text = unicodedata.normalize("NFD", "Học sinh bị đe dọa")
    report = ReportIn(channel="zalo", reporter_role="student", school_code="A-1", description=text)
    assert report.description == unicodedata.normalize("NFC", text)
    with pytest.raises(ValidationError):
        ReportIn.model_validate(
            {
                "channel": "zalo",
                "reporter_role": "student",
                "school_code": "A-1",
                "description": "hello world",
                "phone_of_child": "1",
            }
        )


def test_tracking_codes_are_readable_and_distinct() -> None:
    codes = {new_tracking_code() for _ in range(500)}
    assert len(codes) == 500
    assert all(len(c) == 13 and c.startswith("ESC-") and not set(c) & set("ILOU") for c in codes)
    assert event_id("a", "b") == event_id("a", "b") != event_id("a|b")


def test_open_incident_carries_the_decision_and_no_text_in_audit() -> None:
    now = datetime(2026, 11, 28, tzinfo=UTC)
    submitted = ReportSubmitted(
        report_id="r1",
        tracking_code="ESC-0000-0000",
        received_at=now,
        intake_client="t",
        report=ReportIn(
            channel="app", reporter_role="parent", school_code="A-1", description="secret words"
        ),
    )
    decision = Decision(severity="high", category="fraud", reasons=["r"], rules_version="abc")
    result = open_incident(submitted, decision, now)
    assert result.incident.incident_id == incident_id_for_report("r1")
    assert result.incident.decision == decision
    assert result.audit.detail["rules_version"] == "abc"
    assert "secret words" not in result.audit.model_dump_json()


@pytest.mark.parametrize("hidden", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"])
def test_invisible_characters_cannot_hide_a_word_from_the_classifier(hidden: str) -> None:
    """A zero-width space inside each word once turned a critical grooming report into a low
    one: the recipient read the words, the classifier saw fragments."""
    from escalate.settings import DEFAULT_CONFIG_DIR
    from stream_processors.config_holder import ConfigHolder

    plain = "Một người lạ dụ dỗ em gửi ảnh nhạy cảm và hẹn gặp riêng."
    hiding = " ".join(w[0] + hidden + w[1:] if len(w) > 1 else w for w in plain.split(" "))
    report = ReportIn(channel="app", reporter_role="teacher", school_code="A-1", description=hiding)
    assert report.description == plain
    judge = (
        ConfigHolder(DEFAULT_CONFIG_DIR / "policy.yaml", DEFAULT_CONFIG_DIR / "directory.yaml")
        .current()
        .classifier
    )
    assert judge.classify(report).severity.value == "critical"
