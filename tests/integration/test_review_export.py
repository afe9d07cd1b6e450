"""`escalate review export` on the real broker: reviewed incidents from the state topic become a
labelled corpus that `escalate classify --evaluate` reads as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from escalate.topics_admin import ensure_topics
from schemas.common import Category, Severity, Tier
from schemas.escalation import EscalationState, ReviewState
from schemas.topics import ESCALATION_STATE
from tests.action_support import CONTACT_PHONE, RECEIVED, make_state, publish_state
from tests.conftest import escalate as run_escalate

pytestmark = pytest.mark.kafka

MISSED = "Dạo này có người hay nhắn tin rủ em lên phòng riêng nói chuyện ban đêm."
BULLYING = "Một nhóm bạn lập nhóm chat để chế giễu, xúc phạm em mỗi ngày và đăng ảnh chế của em."


def reviewed(
    incident_id: str, description: str, severity: Severity, category: Category
) -> EscalationState:
    state = make_state(incident_id)
    assert state.incident is not None
    report = state.incident.report.model_copy(update={"description": description})
    state.incident = state.incident.model_copy(update={"report": report})
    state.severity, state.category = severity, category
    state.review = ReviewState(
        reason="severity",
        opened_at=RECEIVED,
        reviewed_by="tiep-nhan@sogd.hanoi.example",
        reviewed_at=RECEIVED + timedelta(minutes=int(incident_id[-1])),
        reviewed_tier=Tier.city_office,
        previous_severity=Severity.low,
        previous_category=Category.other,
    )
    return state


def escalate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The command with ``env`` on top of this process's environment."""
    return run_escalate({**os.environ, **env}, *args)


def test_reviewed_states_export_to_a_corpus_the_evaluation_reads(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    topic = ESCALATION_STATE.name(prefix)
    publish_state(
        kafka_bootstrap,
        topic,
        reviewed("inc-2", BULLYING, Severity.high, Category.cyberbullying),
    )
    publish_state(
        kafka_bootstrap,
        topic,
        reviewed("inc-1", MISSED, Severity.critical, Category.sexual_exploitation),
    )
    publish_state(kafka_bootstrap, topic, make_state("inc-never-reviewed"))
    env = {"ESCALATE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "ESCALATE_TOPIC_PREFIX": prefix}
    corpus = tmp_path / "reviewed.jsonl"

    done = escalate(env, "review", "export", str(corpus))
    assert done.returncode == 0, done.stderr
    assert f"wrote 2 reviewed report(s) to {corpus}" in done.stdout
    rows = [json.loads(line) for line in corpus.read_text("utf-8").splitlines()]
    # Oldest review first; the reviewer's labels; nothing the classifier does not read.
    assert [r["report"]["description"] for r in rows] == [MISSED, BULLYING]
    assert rows[0]["expect"] == {"severity": "critical", "category": "sexual_exploitation"}
    assert rows[1]["expect"] == {"severity": "high", "category": "cyberbullying"}
    assert set(rows[0]) == {"report", "expect"}
    assert "contact" not in rows[0]["report"] and CONTACT_PHONE not in corpus.read_text("utf-8")

    evaluation = escalate({}, "classify", "--evaluate", str(corpus))
    # The rules miss what the reviewer caught: the evaluation says so, and fails on it.
    assert evaluation.returncode == 1, evaluation.stdout + evaluation.stderr
    assert "reports:                 2" in evaluation.stdout
    assert "line 1: expected critical/sexual_exploitation, got low/other" in evaluation.stdout
    assert "cannot read" not in evaluation.stdout and ":1:" not in evaluation.stdout


def test_export_needs_the_bootstrap_servers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ESCALATE_KAFKA_BOOTSTRAP_SERVERS"}
    done = subprocess.run(
        [sys.executable, "-m", "escalate.cli", "review", "export", str(tmp_path / "x.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "ESCALATE_KAFKA_BOOTSTRAP_SERVERS" in done.stderr
