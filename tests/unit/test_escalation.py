"""The escalation core: the ladder, acknowledgements, reminders and the legal guard, with the
clock moved by hand under the default policy and directory."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pydantic import ValidationError

from escalate.settings import DEFAULT_CONFIG_DIR
from schemas.actions import ActionKind, IncidentAction
from schemas.audit import AuditEventType
from schemas.common import Category, Severity, Tier
from schemas.directory import Directory
from schemas.escalation import EscalationState, IncidentStatus
from schemas.incidents import Decision, IncidentClassified
from schemas.notifications import NotificationKind, NotificationRequest
from schemas.policy import Policy, Routing
from schemas.yaml_loader import load_yaml_model
from stream_processors.escalation.core import on_action, on_incident, on_tick
from stream_processors.routing.directory_index import DirectoryIndex
from tests.fakes import T0, make_incident

POLICY = load_yaml_model(DEFAULT_CONFIG_DIR / "policy.yaml", Policy)
INDEX = DirectoryIndex(load_yaml_model(DEFAULT_CONFIG_DIR / "directory.yaml", Directory))
SCHOOL = "bgh@thcs-pct.badinh.example"
DISTRICT = "pgd@badinh.hanoi.example"
CITY = "chanh-van-phong@sogd.hanoi.example"


def incident(severity: Severity, category: Category = Category.cyberbullying) -> IncidentClassified:
    return make_incident(Decision(severity=severity, category=category, rules_version="v1"))


def action(kind: ActionKind, tier: Tier, n: int = 1, at: datetime = T0) -> IncidentAction:
    return IncidentAction(
        action_id=f"a-{n}",
        incident_id="inc-1",
        kind=kind,
        tier=tier,
        actor=f"{tier.value}@example.vn",
        via="link",
        at=at,
        note="Đã gọi cho phụ huynh" if n % 2 else None,
    )


def started(severity: Severity) -> EscalationState:
    return on_incident(None, incident(severity), POLICY, INDEX, T0).state


def sent(requests: list[NotificationRequest]) -> set[tuple[str, NotificationKind]]:
    return {(r.recipient.email, r.kind) for r in requests}


def tiers_of(requests: list[NotificationRequest]) -> set[Tier]:
    return {r.recipient.tier for r in requests}


def test_a_high_incident_nobody_acknowledges_climbs_to_the_city_office_and_never_the_police() -> (
    None
):
    state = started(Severity.high)
    assert state.next_due == T0 + timedelta(hours=1)
    assert state.status is IncidentStatus.open
    assert on_tick(state, POLICY, INDEX, T0 + timedelta(minutes=59)).requests == []

    step1 = on_tick(state, POLICY, INDEX, T0 + timedelta(hours=1))
    assert step1.state.step == 1
    assert sent(step1.requests) == {
        (SCHOOL, NotificationKind.reminder),
        (DISTRICT, NotificationKind.reminder),
        (CITY, NotificationKind.escalation),
    }
    assert {r.step for r in step1.requests} == {1}
    assert all(r.ack_due_at == T0 + timedelta(hours=2) for r in step1.requests)
    [audit] = step1.audits
    assert audit.event is AuditEventType.escalated and audit.detail["escalated_to"] == [
        "city_office"
    ]

    # The ladder ends at the city office for 'high': reminders only, up to the policy's limit.
    state = step1.state
    seen_tiers: set[Tier] = set()
    reminders = 0
    for hour in range(2, 20):
        step = on_tick(state, POLICY, INDEX, T0 + timedelta(hours=hour))
        seen_tiers |= tiers_of(step.requests)
        reminders += bool(step.requests)
        state = step.state
    assert Tier.police not in seen_tiers
    assert seen_tiers == {Tier.school, Tier.district_office, Tier.city_office}
    assert reminders == POLICY.acknowledgement.max_reminders
    assert state.next_due is None


def test_an_acknowledgement_stops_the_climb_and_everyone_told_hears_of_it() -> None:
    state = started(Severity.high)
    acked = on_action(
        state, action(ActionKind.acknowledge, Tier.district_office), POLICY, INDEX, T0
    )
    assert acked.state.next_due is None
    assert acked.state.status is IncidentStatus.acknowledged
    assert sent(acked.requests) == {
        (SCHOOL, NotificationKind.acknowledged),
        (DISTRICT, NotificationKind.acknowledged),
    }
    assert {r.acted_by for r in acked.requests} == {Tier.district_office}
    [audit] = acked.audits
    assert audit.event is AuditEventType.acknowledged
    assert audit.detail == {
        "tier": "district_office",
        "recipient": "district_office@example.vn",
        "via": "link",
        "note_length": len("Đã gọi cho phụ huynh"),
    }
    assert on_tick(acked.state, POLICY, INDEX, T0 + timedelta(hours=5)).requests == []


def test_critical_each_organisation_is_reminded_until_it_acknowledges_for_itself() -> None:
    state = started(Severity.critical)
    assert {t for t, ts in state.tiers.items() if ts.notified_at_step == 0} == set(Tier)
    state = on_action(state, action(ActionKind.acknowledge, Tier.school), POLICY, INDEX, T0).state
    assert state.next_due == T0 + timedelta(minutes=15)  # the others still owe theirs
    step = on_tick(state, POLICY, INDEX, T0 + timedelta(minutes=15))
    assert tiers_of(step.requests) == {Tier.district_office, Tier.city_office, Tier.police}
    assert {r.kind for r in step.requests} == {NotificationKind.reminder}
    state = step.state
    for n, tier in enumerate((Tier.district_office, Tier.city_office, Tier.police), start=2):
        state = on_action(state, action(ActionKind.acknowledge, tier, n), POLICY, INDEX, T0).state
    assert state.next_due is None


def test_an_acknowledgement_that_overtakes_its_incident_still_counts() -> None:
    early = on_action(None, action(ActionKind.acknowledge, Tier.school), POLICY, INDEX, T0)
    assert early.state.incident is None and early.requests == []
    assert [a.event for a in early.audits] == [AuditEventType.acknowledged]
    late = on_incident(early.state, incident(Severity.high), POLICY, INDEX, T0)
    assert late.state.next_due is None  # a late routing event cannot escalate it
    assert on_tick(late.state, POLICY, INDEX, T0 + timedelta(days=1)).requests == []


def test_repeated_events_change_nothing() -> None:
    state = started(Severity.high)
    again = on_incident(state, incident(Severity.high), POLICY, INDEX, T0 + timedelta(minutes=5))
    assert again.state == state and again.requests == [] and again.audits == []
    first = on_action(state, action(ActionKind.acknowledge, Tier.school), POLICY, INDEX, T0)
    twice = on_action(first.state, action(ActionKind.acknowledge, Tier.school), POLICY, INDEX, T0)
    assert twice.requests == [] and twice.audits == []
    # The same step replayed from the same state gives the same ids: the notifier's dedupe key.
    one = on_tick(state, POLICY, INDEX, T0 + timedelta(hours=1))
    two = on_tick(state, POLICY, INDEX, T0 + timedelta(hours=1, seconds=3))
    assert [r.notification_id for r in one.requests] == [r.notification_id for r in two.requests]
    assert [a.event_id for a in one.audits] == [a.event_id for a in two.audits]


def test_a_resolution_stops_everything_and_is_announced() -> None:
    state = started(Severity.critical)
    done = on_action(state, action(ActionKind.resolve, Tier.police, 2), POLICY, INDEX, T0)
    assert done.state.status is IncidentStatus.resolved and done.state.next_due is None
    assert {r.kind for r in done.requests} == {NotificationKind.resolved}
    assert tiers_of(done.requests) == set(Tier)
    assert on_tick(done.state, POLICY, INDEX, T0 + timedelta(hours=1)).requests == []
    late_ack = on_action(
        done.state, action(ActionKind.acknowledge, Tier.school, 3), POLICY, INDEX, T0
    )
    assert late_ack.requests == []


def test_a_note_is_recorded_by_length_only() -> None:
    state = started(Severity.medium)
    noted = on_action(state, action(ActionKind.note, Tier.school, 5), POLICY, INDEX, T0)
    [audit] = noted.audits
    assert audit.event is AuditEventType.note_added and audit.detail["note_length"] > 0
    assert "phụ huynh" not in audit.model_dump_json()
    assert noted.state.next_due == state.next_due  # a note is not an acknowledgement


def routing_with(**critical: object) -> dict[str, object]:
    data = POLICY.model_dump(mode="json", include={"severities", "escalation_ladder"})
    data["severities"]["critical"] = critical
    return data


def test_the_policy_refuses_a_critical_route_that_could_leave_the_police_untold() -> None:
    with pytest.raises(ValidationError, match="police is neither in notify nor reachable"):
        Routing.model_validate(routing_with(notify=["school"], ack_within="15m"))
    with pytest.raises(ValidationError, match="more than the legal 12h"):
        Routing.model_validate(
            routing_with(notify=["school"], ack_within="5h", escalate_up_to="police")
        )
    ok = Routing.model_validate(
        routing_with(notify=["school"], ack_within="4h", escalate_up_to="police")
    )
    assert ok.climb(Severity.critical) == [Tier.district_office, Tier.city_office, Tier.police]


def test_critical_climbs_even_after_the_school_acknowledges_until_every_tier_is_told() -> None:
    routing = Routing.model_validate(
        routing_with(notify=["school"], ack_within="1h", escalate_up_to="police")
    )
    state = on_incident(None, incident(Severity.critical), routing, INDEX, T0).state
    state = on_action(state, action(ActionKind.acknowledge, Tier.school), routing, INDEX, T0).state
    told = set()
    for hour in (1, 2, 3):
        step = on_tick(state, routing, INDEX, T0 + timedelta(hours=hour))
        told |= {r.recipient.tier for r in step.requests if r.kind is NotificationKind.escalation}
        state = step.state
    assert told == {Tier.district_office, Tier.city_office, Tier.police}
