"""Triage of what the classifier is unsure of: who is asked, when the review ladder climbs, and
how a review re-routes; the clock moved by hand under the default policy and directory."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pydantic import ValidationError

from escalate.settings import DEFAULT_CONFIG_DIR
from schemas.actions import ActionKind, IncidentAction
from schemas.audit import AuditEventType
from schemas.common import Category, Severity, Tier
from schemas.directory import Directory
from schemas.escalation import EscalationState
from schemas.incidents import DANGER_WITHOUT_RULE, Decision, IncidentClassified
from schemas.notifications import NotificationKind, NotificationRequest
from schemas.policy import Policy, ReviewReason, Routing
from schemas.reports import ReportIn
from schemas.yaml_loader import load_yaml_model
from stream_processors.classification.engine import Classifier
from stream_processors.escalation.core import on_action, on_incident, on_tick
from stream_processors.routing.directory_index import DirectoryIndex
from tests.fakes import T0, make_incident

POLICY = load_yaml_model(DEFAULT_CONFIG_DIR / "policy.yaml", Policy)
INDEX = DirectoryIndex(load_yaml_model(DEFAULT_CONFIG_DIR / "directory.yaml", Directory))
DESK = "tiep-nhan@sogd.hanoi.example"
SCHOOL = "bgh@thcs-pct.badinh.example"
CITY = "chanh-van-phong@sogd.hanoi.example"
POLICE = {"truc-ban@ca.badinh.hanoi.example", "pa05-truc-ban@congan.hanoi.example"}
DESCRIPTION = "Dạo này có người hay nhắn tin rủ em lên phòng riêng nói chuyện ban đêm."
PHONE = "0900 000 000"


def incident(
    severity: Severity = Severity.low,
    category: Category = Category.other,
    *,
    needs_review: bool = False,
    danger: bool = False,
    reasons: list[str] | None = None,
) -> IncidentClassified:
    decision = Decision(
        severity=severity,
        category=category,
        reasons=reasons or [],
        needs_review=needs_review,
        rules_version="v1",
    )
    return make_incident(decision, description=DESCRIPTION, danger=danger)


def review(
    severity: Severity | None,
    category: Category | None,
    n: int = 1,
    at: datetime = T0,
) -> IncidentAction:
    return IncidentAction(
        action_id=f"rv-{n}",
        incident_id="inc-1",
        kind=ActionKind.reclassify,
        tier=Tier.city_office,
        actor=DESK,
        via="link",
        at=at,
        severity=severity,
        category=category,
        note="Em kể người này đòi ảnh riêng tư",
    )


def sent(requests: list[NotificationRequest]) -> set[tuple[str, NotificationKind]]:
    return {(r.recipient.email, r.kind) for r in requests}


def opened(**kwargs: object) -> EscalationState:
    return on_incident(None, incident(**kwargs), POLICY, INDEX, T0).state  # type: ignore[arg-type]


# --- which decisions go to triage -------------------------------------------------------------


def test_the_default_predicate() -> None:
    rules = POLICY.review
    assert rules.reason(incident().decision, incident().report) is ReviewReason.severity
    flagged = incident(Severity.high, Category.cyberbullying, needs_review=True)
    assert rules.reason(flagged.decision, flagged.report) is ReviewReason.needs_review
    sure = incident(Severity.high, Category.cyberbullying)
    assert rules.reason(sure.decision, sure.report) is None
    tick_only = incident(
        Severity.critical,
        Category.cyberbullying,
        danger=True,
        reasons=["immediate_danger ticked", DANGER_WITHOUT_RULE],
    )
    assert rules.reason(tick_only.decision, tick_only.report) is ReviewReason.danger_without_rule
    backed = incident(Severity.critical, Category.sexual_exploitation, danger=True, reasons=["x"])
    assert rules.reason(backed.decision, backed.report) is None


def text_report(description: str, **extra: object) -> ReportIn:
    return ReportIn.model_validate(
        {
            "channel": "app",
            "reporter_role": "teacher",
            "school_code": "HN-BD-THCS-001",
            "description": description,
            **extra,
        }
    )


def test_the_classifier_marks_a_danger_that_no_rule_backs() -> None:
    classifier = Classifier(POLICY)
    # A high rule and the tick: critical on the reporter's word alone, not flagged otherwise.
    bullying = classifier.classify(
        text_report(
            "Một nhóm bạn lập nhóm chat để chế giễu, xúc phạm em và đăng ảnh chế của em.",
            immediate_danger=True,
        )
    )
    assert bullying.severity is Severity.critical and not bullying.needs_review
    assert DANGER_WITHOUT_RULE in bullying.reasons
    grooming = classifier.classify(
        text_report(
            "Một người lạ nhắn tin đòi con tôi gửi ảnh riêng tư và hẹn gặp con.",
            immediate_danger=True,
        )
    )
    assert DANGER_WITHOUT_RULE not in grooming.reasons
    unticked = classifier.classify(text_report("Em bị bạn chế giễu, xúc phạm trên nhóm lớp."))
    assert DANGER_WITHOUT_RULE not in unticked.reasons


def test_the_policy_section_is_validated_by_key() -> None:
    base = POLICY.model_dump(mode="json", include={"severities", "escalation_ladder"})
    with pytest.raises(ValidationError, match=r"review\.within"):
        Routing.model_validate({**base, "review": {"within": "soon"}})
    with pytest.raises(ValidationError, match=r"review\.ladder"):
        Routing.model_validate(
            {**base, "review": {"ladder": [{"tier": "police"}, {"tier": "police"}]}}
        )
    with pytest.raises(ValidationError, match=r"review\.recipients"):
        Routing.model_validate({**base, "review": {"recipients": ["the_mayor"]}})
    # An older policy file without the section gets the defaults.
    assert Routing.model_validate(base).review == POLICY.review


# --- opening a review and the review ladder ---------------------------------------------------


def test_a_low_report_goes_to_the_intake_desk_with_the_review_deadline() -> None:
    start = on_incident(None, incident(), POLICY, INDEX, T0)
    assert sent(start.requests) == {(DESK, NotificationKind.review)}
    [req] = start.requests
    assert req.ack_due_at == T0 + timedelta(minutes=30)
    assert req.step == 0 and req.recipient.tier is Tier.city_office
    assert req.contact is not None  # the city office may see the reporter's contact
    state = start.state
    assert state.review is not None and state.review.reason == "severity"
    assert state.review.due == T0 + timedelta(minutes=30)
    # The school's own deadline (24h) is later: the worker watches the review's.
    assert state.escalation_due == T0 + timedelta(hours=24)
    assert state.next_due == T0 + timedelta(minutes=30)
    [audit] = start.audits
    assert audit.event is AuditEventType.escalated and audit.detail["review"] == "severity"
    assert DESCRIPTION not in audit.model_dump_json() and PHONE not in audit.model_dump_json()


def test_a_sure_decision_opens_no_review() -> None:
    start = on_incident(None, incident(Severity.high, Category.cyberbullying), POLICY, INDEX, T0)
    assert start.requests == [] and start.state.review is None
    assert start.state.next_due == start.state.escalation_due == T0 + timedelta(hours=1)


def test_nobody_reviews_the_city_office_is_asked_then_nothing_more_without_danger() -> None:
    state = opened()
    assert on_tick(state, POLICY, INDEX, T0 + timedelta(minutes=29)).requests == []
    step = on_tick(state, POLICY, INDEX, T0 + timedelta(minutes=30))
    assert sent(step.requests) == {(CITY, NotificationKind.review)}
    assert {r.step for r in step.requests} == {1}
    assert step.state.step == 1
    assert step.state.tiers.get(Tier.city_office) is None  # asked to review, not routed to
    [audit] = step.audits
    assert audit.detail["escalated_to"] == ["city_office"]
    # The same step taken twice from the same state: the same ids (the notifier's dedupe).
    again = on_tick(state, POLICY, INDEX, T0 + timedelta(minutes=31))
    assert [r.notification_id for r in again.requests] == [r.notification_id for r in step.requests]
    # The police rung is only for a ticked danger: the review ladder is spent.
    state = step.state
    later = on_tick(state, POLICY, INDEX, T0 + timedelta(hours=1))
    assert later.requests == [] and later.state.review is not None
    assert later.state.review.due is None
    assert later.state.next_due == T0 + timedelta(hours=24)  # the school's deadline remains
    # And it is never asked twice.
    assert on_tick(later.state, POLICY, INDEX, T0 + timedelta(hours=2)).requests == []


def test_a_ticked_danger_no_rule_backs_climbs_the_review_ladder_to_the_police() -> None:
    state = opened(
        severity=Severity.critical,
        category=Category.threat_of_violence,
        danger=True,
        reasons=["immediate_danger ticked", DANGER_WITHOUT_RULE],
    )
    assert state.review is not None and state.review.reason == "danger_without_rule"
    # Critical: the escalation deadline (15m) and the review's (30m) run side by side.
    assert state.next_due == T0 + timedelta(minutes=15)
    escalation = on_tick(state, POLICY, INDEX, T0 + timedelta(minutes=15))
    assert {r.kind for r in escalation.requests} == {NotificationKind.reminder}
    state = escalation.state
    assert state.next_due == T0 + timedelta(minutes=30)
    both = on_tick(state, POLICY, INDEX, T0 + timedelta(minutes=30))
    kinds = {r.kind for r in both.requests}
    assert kinds == {NotificationKind.reminder, NotificationKind.review}
    assert {r.recipient.email for r in both.requests if r.kind is NotificationKind.review} == {CITY}
    state = both.state
    police = on_tick(state, POLICY, INDEX, T0 + timedelta(hours=1))
    asked = {r.recipient.email for r in police.requests if r.kind is NotificationKind.review}
    assert asked == POLICE


def test_a_resolution_ends_the_review() -> None:
    state = opened()
    done = on_action(
        state,
        IncidentAction(
            action_id="res",
            incident_id="inc-1",
            kind=ActionKind.resolve,
            tier=Tier.school,
            actor=SCHOOL,
            via="link",
            at=T0,
        ),
        POLICY,
        INDEX,
        T0,
    )
    assert done.state.next_due is None
    assert on_tick(done.state, POLICY, INDEX, T0 + timedelta(hours=1)).requests == []


# --- reviewing ---------------------------------------------------------------------------------


def test_a_raise_to_critical_tells_every_untold_tier_at_once_and_restarts_the_clock() -> None:
    state = opened()
    now = T0 + timedelta(minutes=10)
    raised = on_action(
        state, review(Severity.critical, Category.sexual_exploitation), POLICY, INDEX, now
    )
    told = {r.recipient.tier for r in raised.requests}
    assert told == {Tier.district_office, Tier.city_office, Tier.police}  # not the school again
    assert {r.kind for r in raised.requests} == {NotificationKind.first_notice}
    assert {r.step for r in raised.requests} == {1}
    assert {r.severity for r in raised.requests} == {Severity.critical}
    assert {r.category for r in raised.requests} == {Category.sexual_exploitation}
    assert all(r.ack_due_at == now + timedelta(minutes=15) for r in raised.requests)
    s = raised.state
    assert (s.severity, s.category) == (Severity.critical, Category.sexual_exploitation)
    assert s.escalation_due == s.next_due == now + timedelta(minutes=15)
    assert all(s.tiers[t].notified_at_step is not None for t in Tier)
    assert s.review is not None and s.review.due is None
    assert (s.review.reviewed_by, s.review.reviewed_tier) == (DESK, Tier.city_office)
    assert (s.review.previous_severity, s.review.previous_category) == (
        Severity.low,
        Category.other,
    )
    [audit] = raised.audits
    assert audit.event is AuditEventType.reclassified
    assert {
        k: audit.detail[k]
        for k in (
            "old_severity",
            "old_category",
            "new_severity",
            "new_category",
            "change",
            "tier",
            "recipient",
        )
    } == {
        "old_severity": "low",
        "old_category": "other",
        "new_severity": "critical",
        "new_category": "sexual_exploitation",
        "change": "raised",
        "tier": "city_office",
        "recipient": DESK,
    }
    text = audit.model_dump_json()
    assert "ảnh riêng tư" not in text and DESCRIPTION not in text and PHONE not in text
    # The review ladder stopped; the critical reminders run on the new clock.
    step = on_tick(s, POLICY, INDEX, now + timedelta(minutes=15))
    assert {r.kind for r in step.requests} == {NotificationKind.reminder}
    assert {r.recipient.tier for r in step.requests} == set(Tier)
    # The same review again (a double click) changes nothing.
    twice = on_action(
        s, review(Severity.critical, Category.sexual_exploitation), POLICY, INDEX, now
    )
    assert twice.requests == [] and twice.audits == []


def test_a_raise_to_high_climbs_the_high_ladder_afterwards() -> None:
    state = opened()
    raised = on_action(state, review(Severity.high, Category.cyberbullying), POLICY, INDEX, T0)
    assert sent(raised.requests) == {("pgd@badinh.hanoi.example", NotificationKind.first_notice)}
    step = on_tick(raised.state, POLICY, INDEX, T0 + timedelta(hours=1))
    assert (CITY, NotificationKind.escalation) in sent(step.requests)


def test_a_confirmation_records_the_review_and_changes_nothing_else() -> None:
    state = opened()
    confirmed = on_action(state, review(Severity.low, Category.other), POLICY, INDEX, T0)
    assert confirmed.requests == []
    s = confirmed.state
    assert s.review is not None and s.review.reviewed_by == DESK and s.review.due is None
    assert s.next_due == s.escalation_due == state.escalation_due
    [audit] = confirmed.audits
    assert audit.detail["change"] == "confirmed"
    assert on_tick(s, POLICY, INDEX, T0 + timedelta(minutes=30)).requests == []


def test_a_lowering_unnotifies_nobody_and_only_changes_later_steps() -> None:
    state = opened(
        severity=Severity.critical,
        category=Category.threat_of_violence,
        danger=True,
        reasons=["immediate_danger ticked", DANGER_WITHOUT_RULE],
    )
    lowered = on_action(state, review(Severity.medium, Category.cyberbullying), POLICY, INDEX, T0)
    assert lowered.requests == []
    s = lowered.state
    assert all(s.tiers[t].notified_at_step == 0 for t in Tier)  # everyone stays told
    assert s.escalation_due == state.escalation_due  # the deadline is not pushed out
    assert lowered.audits[0].detail["change"] == "lowered"
    # A later acknowledgement now ends it, as for any non-critical incident.
    acked = on_action(
        s,
        IncidentAction(
            action_id="ack",
            incident_id="inc-1",
            kind=ActionKind.acknowledge,
            tier=Tier.school,
            actor=SCHOOL,
            via="link",
            at=T0,
        ),
        POLICY,
        INDEX,
        T0,
    )
    assert acked.state.next_due is None


def test_a_review_before_its_incident_is_recorded_and_applies_nothing() -> None:
    early = on_action(None, review(Severity.critical, Category.fraud), POLICY, INDEX, T0)
    assert early.requests == []
    [audit] = early.audits
    assert audit.event is AuditEventType.reclassified and audit.detail["applied"] is False


def test_a_state_from_before_reviews_keeps_its_deadline() -> None:
    old = {
        "incident_id": "inc-1",
        "next_due": T0.isoformat(),
        "updated_at": T0.isoformat(),
    }
    state = EscalationState.model_validate(old)
    assert state.escalation_due == T0 and state.review is None
