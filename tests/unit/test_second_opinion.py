"""The rules and the learned second opinion combined: the model never lowers, a model-only raise
reaches the schools and offices at once but the police only after a person confirms it, and a
model that fails leaves the rules to decide alone."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from escalate.components import load_model
from escalate.settings import DEFAULT_CONFIG_DIR, Settings
from schemas.actions import ActionKind, IncidentAction
from schemas.audit import AuditEventType
from schemas.common import Category, Severity, Tier
from schemas.directory import Directory
from schemas.escalation import EscalationState
from schemas.incidents import Decision
from schemas.notifications import NotificationKind, NotificationRequest
from schemas.policy import Policy, ReviewReason
from schemas.reports import ReportIn
from schemas.yaml_loader import load_yaml_model
from stream_processors.classification.engine import Classifier
from stream_processors.classification.model import ModelOpinion, load
from stream_processors.classification.second_opinion import Judge, combine, explain
from stream_processors.classification.training import DEFAULT_MODEL
from stream_processors.config_holder import ConfigHolder
from stream_processors.escalation.core import on_action, on_incident, on_tick
from stream_processors.routing.core import plan_notifications
from stream_processors.routing.directory_index import DirectoryIndex
from tests.fakes import T0, make_incident

POLICY = load_yaml_model(DEFAULT_CONFIG_DIR / "policy.yaml", Policy)
INDEX = DirectoryIndex(load_yaml_model(DEFAULT_CONFIG_DIR / "directory.yaml", Directory))
SECOND = POLICY.second_opinion
DESK = "tiep-nhan@sogd.hanoi.example"
POLICE = {"truc-ban@ca.badinh.hanoi.example", "pa05-truc-ban@congan.hanoi.example"}
# From untuned batch 10: the rules find nothing to match, and the model rates it critical.
QUIET = (
    "Bạn em đăng lên story ảnh một vỉ thuốc đã bóc gần hết với dòng 'đủ rồi'. Dạo này bạn ấy "
    "bị điểm kém và bị bố mẹ mắng nhiều."
)


def rules(severity: Severity, category: Category = Category.other) -> Decision:
    return Decision(severity=severity, category=category, reasons=["rule x"], rules_version="v1")


def opinion(
    severity: Severity,
    p: float = 0.83,
    category: Category = Category.sexual_exploitation,
    pc: float = 0.7,
) -> ModelOpinion:
    return ModelOpinion(
        severity=severity.value,
        severity_probability=p,
        probabilities={},
        category=category.value,
        category_probability=pc,
        top_features=["anh ay", "gui anh", "bi mat"],
    )


def raised_incident(danger: bool = False) -> EscalationState:
    decision = combine(rules(Severity.low), opinion(Severity.critical), SECOND, "m1")
    incident = make_incident(decision, danger=danger)
    return on_incident(None, incident, POLICY, INDEX, T0).state


def emails(requests: list[NotificationRequest]) -> set[str]:
    return {r.recipient.email for r in requests}


def reclassify(severity: Severity, n: int = 1) -> IncidentAction:
    return IncidentAction(
        action_id=f"rv-{n}",
        incident_id="inc-1",
        kind=ActionKind.reclassify,
        tier=Tier.city_office,
        actor=DESK,
        via="link",
        at=T0 + timedelta(minutes=5),
        severity=severity,
        category=Category.sexual_exploitation,
    )


# --- combining ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model_says", [Severity.low, Severity.high, Severity.critical])
def test_the_model_never_lowers_the_rules(model_says: Severity) -> None:
    decision = combine(
        rules(Severity.critical, Category.self_harm), opinion(model_says), SECOND, "m1"
    )
    assert decision.severity is Severity.critical
    assert decision.category is Category.self_harm  # the rules found one: the model's is ignored
    assert not decision.model_raised
    assert decision.model_version == "m1"
    assert decision.second_opinion is not None and decision.second_opinion.raised_from is None


def test_a_model_only_raise_takes_the_higher_severity_flagged_with_its_reasons() -> None:
    decision = combine(rules(Severity.low), opinion(Severity.critical), SECOND, "m1")
    assert decision.severity is Severity.critical
    assert decision.model_raised and decision.needs_review
    view = decision.second_opinion
    assert view is not None and view.raised_from is Severity.low
    assert 'model: critical 0.83 — "anh ay", "gui anh", "bi mat"' in decision.reasons
    assert decision.reasons[0] == "rule x"  # the rules' own reasons stay first
    assert POLICY.review.reason(decision, make_incident(decision).report) is (
        ReviewReason.model_raised
    )


def test_the_model_proposes_a_category_only_where_the_rules_found_none() -> None:
    proposed = combine(rules(Severity.low), opinion(Severity.low, pc=0.6), SECOND, "m1")
    assert proposed.category is Category.sexual_exploitation
    assert proposed.second_opinion and proposed.second_opinion.category_from is Category.other
    unsure = combine(rules(Severity.low), opinion(Severity.low, pc=0.4), SECOND, "m1")
    assert unsure.category is Category.other
    assert unsure.second_opinion and unsure.second_opinion.category_from is None
    other = combine(
        rules(Severity.low), opinion(Severity.low, category=Category.other, pc=0.99), SECOND, "m1"
    )
    assert other.category is Category.other


def test_an_explanation_without_features_is_still_a_line() -> None:
    decision = combine(rules(Severity.low), opinion(Severity.medium, p=0.5), SECOND, "m1")
    assert decision.second_opinion is not None
    bare = decision.second_opinion.model_copy(update={"features": []})
    assert explain(bare) == "model: medium 0.50"


def test_the_policy_section_is_validated() -> None:
    with pytest.raises(ValidationError, match="raise_threshold"):
        Policy.model_validate({**POLICY.model_dump(), "second_opinion": {"raise_threshold": 0}})
    with pytest.raises(ValidationError, match="review_within"):
        Policy.model_validate({**POLICY.model_dump(), "second_opinion": {"review_within": "0s"}})
    with pytest.raises(ValidationError, match="withhold"):
        Policy.model_validate({**POLICY.model_dump(), "second_opinion": {"withhold": ["police"]}})


# --- the judge: rules plus the shipped model -----------------------------------------------


def quiet_report() -> ReportIn:
    return ReportIn(
        channel="web_form", reporter_role="student", school_code="HN-BD-THCS-001", description=QUIET
    )


def test_the_shipped_model_raises_what_the_rules_miss_and_the_police_wait() -> None:
    classifier = Classifier(POLICY)
    assert classifier.classify(quiet_report()).severity is Severity.low
    decision = Judge(classifier, load(DEFAULT_MODEL)).classify(quiet_report())
    assert decision.severity is Severity.critical and decision.model_raised
    assert decision.model_version == load(DEFAULT_MODEL).model_version
    assert POLICY.first_tiers(decision) == [Tier.school, Tier.district_office, Tier.city_office]
    assert POLICY.withheld(decision) == [Tier.police]


def test_a_failing_model_leaves_the_rules_alone() -> None:
    class Broken:
        model_version = "broken"

        def predict(self, *args: object, **kwargs: object) -> ModelOpinion:
            raise FloatingPointError("planted")

    judge = Judge(Classifier(POLICY), Broken())  # type: ignore[arg-type]
    decision = judge.classify(quiet_report())
    assert decision == Classifier(POLICY).classify(quiet_report())
    assert decision.model_version is None and judge.model_failures == 1


def test_a_disabled_second_opinion_is_not_asked() -> None:
    off = Policy.model_validate({**POLICY.model_dump(), "second_opinion": {"enabled": False}})
    decision = Judge(Classifier(off), load(DEFAULT_MODEL)).classify(quiet_report())
    assert decision.severity is Severity.low and decision.second_opinion is None


# --- routing and escalation of a model-only raise ------------------------------------------


def test_the_first_notice_reaches_school_and_offices_but_not_the_police() -> None:
    decision = combine(rules(Severity.low), opinion(Severity.critical), SECOND, "m1")
    plan = plan_notifications(make_incident(decision), POLICY, INDEX, T0)
    assert {r.recipient.tier for r in plan.notifications} == {
        Tier.school,
        Tier.district_office,
        Tier.city_office,
    }
    assert plan.audit.detail["withheld_until_review"] == ["police"]
    assert all(r.severity is Severity.critical for r in plan.notifications)


def test_triage_gets_the_short_deadline_and_the_police_are_not_counted_as_told() -> None:
    decision = combine(rules(Severity.low), opinion(Severity.critical), SECOND, "m1")
    opened = on_incident(None, make_incident(decision), POLICY, INDEX, T0)
    assert {(r.recipient.email, r.kind) for r in opened.requests} == {
        (DESK, NotificationKind.review)
    }
    state = opened.state
    assert state.withheld == [Tier.police]
    assert Tier.police not in state.tiers
    assert state.review is not None and state.review.reason == "model_raised"
    assert state.review.due == T0 + SECOND.review_within == T0 + timedelta(minutes=10)
    assert state.next_due == T0 + timedelta(minutes=10)


def test_nobody_reviews_and_no_danger_ticked_the_police_are_never_told() -> None:
    state = raised_incident()
    told: set[str] = set()
    now = T0
    for _ in range(40):  # hours of deadlines: reminders, the review ladder, and no police
        now = now + timedelta(minutes=15)
        step = on_tick(state, POLICY, INDEX, now)
        state = step.state
        told |= emails(step.requests)
    assert not told & POLICE
    assert state.withheld == [Tier.police]


def test_a_reviewer_confirming_tells_the_police_at_once() -> None:
    state = raised_incident()
    step = on_action(state, reclassify(Severity.critical), POLICY, INDEX, T0 + timedelta(minutes=5))
    assert emails(step.requests) == POLICE
    assert {r.kind for r in step.requests} == {NotificationKind.first_notice}
    assert step.state.withheld == []
    assert step.state.tiers[Tier.police].notified_at_step == step.state.step
    (audit,) = step.audits
    assert audit.event is AuditEventType.reclassified and audit.detail["change"] == "confirmed"
    assert audit.detail["notified"] == ["police"]


def test_a_reviewer_lowering_it_keeps_the_police_out() -> None:
    state = raised_incident()
    step = on_action(state, reclassify(Severity.high), POLICY, INDEX, T0 + timedelta(minutes=5))
    assert step.requests == [] and step.state.withheld == []
    later = step.state
    for hours in range(1, 30):
        later = on_tick(later, POLICY, INDEX, T0 + timedelta(hours=hours)).state
    assert Tier.police not in later.tiers


def test_nobody_reviews_in_time_and_danger_ticked_the_police_are_told() -> None:
    # With the default rules a ticked danger is critical on its own; a policy that does not do
    # that still must not leave a model-only raise with a child in danger waiting for a person.
    state = raised_incident(danger=True)
    early = on_tick(state, POLICY, INDEX, T0 + timedelta(minutes=9))
    assert early.requests == []
    step = on_tick(state, POLICY, INDEX, T0 + timedelta(minutes=10))
    assert emails(step.requests) >= POLICE
    assert {r.kind for r in step.requests if r.recipient.email in POLICE} == {
        NotificationKind.first_notice
    }
    assert step.state.withheld == []
    assert any(a.detail.get("released") for a in step.audits)


# --- loading in the composition root ---------------------------------------------------------


def test_a_refused_model_file_leaves_the_rules_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = load(DEFAULT_MODEL)
    assert load_model(Settings(model_file=DEFAULT_MODEL)).model_version == good.model_version  # type: ignore[union-attr]
    tampered = tmp_path / "model.npz"
    data = bytearray(DEFAULT_MODEL.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="escalate"):
        assert load_model(Settings(model_file=tampered)) is None
    assert "model refused, the rules decide alone" in caplog.text
    assert load_model(Settings(model_file=DEFAULT_MODEL, model_sha256="0" * 64)) is None
    assert load_model(Settings(model_file="")) is None  # type: ignore[arg-type]


def test_the_model_survives_a_policy_reload(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text((DEFAULT_CONFIG_DIR / "policy.yaml").read_text("utf-8"), encoding="utf-8")
    model = load(DEFAULT_MODEL)
    holder = ConfigHolder(policy, DEFAULT_CONFIG_DIR / "directory.yaml", model=model)
    policy.write_text(
        policy.read_text("utf-8").replace("review_within: 10m", "review_within: 5m"),
        encoding="utf-8",
    )
    assert holder.reload(force=True)
    fresh = holder.current()
    assert fresh.classifier.model is model
    assert fresh.policy.second_opinion.review_within == timedelta(minutes=5)
