"""Later reports of an open incident (``on_update``): no second first notice, the count and
the new reports in the next mail, a raise that re-routes at once, at most one digest per
ack_within. Default policy and directory, the clock moved by hand."""

from __future__ import annotations

from datetime import timedelta

from escalate.settings import DEFAULT_CONFIG_DIR
from producers.intake.action_page import render_action_page
from schemas.actions import ActionKind, IncidentAction
from schemas.audit import AuditEventType
from schemas.common import Category, Severity, Tier
from schemas.directory import Directory
from schemas.escalation import MAX_LATER_REPORTS, EscalationState
from schemas.incidents import Decision, ModelView
from schemas.links import LinkClaims, LinkPurpose
from schemas.notifications import NotificationKind
from schemas.policy import Policy
from schemas.yaml_loader import load_yaml_model
from stream_processors.escalation.core import on_action, on_incident, on_tick, on_update
from stream_processors.routing.directory_index import DirectoryIndex
from tests.fakes import T0, make_incident, make_update

POLICY = load_yaml_model(DEFAULT_CONFIG_DIR / "policy.yaml", Policy)
INDEX = DirectoryIndex(load_yaml_model(DEFAULT_CONFIG_DIR / "directory.yaml", Directory))
MEDIUM = Decision(severity=Severity.medium, category=Category.intrusion, rules_version="v1")
CRITICAL = Decision(
    severity=Severity.critical, category=Category.sexual_exploitation, rules_version="v1"
)


def opened(decision: Decision = MEDIUM) -> EscalationState:
    return on_incident(None, make_incident(decision), POLICY, INDEX, T0).state


def joined(state: EscalationState, count: int, decision: Decision = MEDIUM) -> EscalationState:
    for n in range(1, count + 1):
        state = on_update(
            state, make_update(decision, n, at=T0 + timedelta(seconds=n)), POLICY, INDEX, T0
        ).state
    return state


def test_a_later_report_of_the_same_level_sends_nothing_and_is_recorded() -> None:
    state = opened()
    step = on_update(state, make_update(MEDIUM, 1), POLICY, INDEX, T0 + timedelta(minutes=1))
    assert step.requests == []
    [audit] = step.audits
    assert audit.event is AuditEventType.updated
    assert audit.report_ids == ["r-1", "r-later-1"]
    assert audit.detail["match"] == {"kind": "link", "label": "zoom", "score": 1.0}
    assert "description" not in str(audit.detail) and "Học sinh" not in str(audit.detail)
    assert step.state.report_count == 2
    assert step.state.incident is not None
    assert step.state.incident.tracking_codes == ["ESC-AAAA-BBBB", "ESC-LATE-0001"]


def test_the_same_update_twice_is_taken_once() -> None:
    state = joined(opened(), 1)
    again = on_update(state, make_update(MEDIUM, 1), POLICY, INDEX, T0 + timedelta(minutes=5))
    assert again.state == state and again.requests == [] and again.audits == []


def test_twenty_reports_then_the_reminder_shows_the_count_and_the_latest_reports() -> None:
    state = joined(opened(), 29)
    assert state.report_count == 30
    assert len(state.later_reports) == MAX_LATER_REPORTS
    # medium: school told, ack_within 4h; the reminder (and the climb) at T0+4h carry the news
    step = on_tick(state, POLICY, INDEX, T0 + timedelta(hours=4))
    kinds = {(r.recipient.tier, r.kind) for r in step.requests}
    assert (Tier.school, NotificationKind.reminder) in kinds
    for request in step.requests:
        assert request.report_count == 30
        assert len(request.later_reports) == MAX_LATER_REPORTS
        assert request.later_reports[-1].tracking_code == "ESC-LATE-0029"
    reminder = next(r for r in step.requests if r.kind is NotificationKind.reminder)
    assert reminder.new_reports == 29
    # the school tier never sees a reporter's contact, in later reports either
    assert all(note.contact is None for note in reminder.later_reports)
    assert step.state.digest_due is None  # everyone told has now seen all 30


def test_contact_of_later_reports_follows_the_tier_rule() -> None:
    state = joined(opened(CRITICAL), 1)
    step = on_tick(state, POLICY, INDEX, T0 + timedelta(minutes=15))
    district = next(r for r in step.requests if r.recipient.tier is Tier.district_office)
    school = next(r for r in step.requests if r.recipient.tier is Tier.school)
    assert district.later_reports[0].contact is not None
    assert school.later_reports[0].contact is None


def test_after_an_acknowledgement_one_digest_per_ack_within() -> None:
    state = opened()
    ack = IncidentAction(
        action_id="a-1",
        incident_id="inc-1",
        kind=ActionKind.acknowledge,
        tier=Tier.school,
        actor="bgh@example.vn",
        via="link",
        at=T0 + timedelta(minutes=2),
    )
    state = on_action(state, ack, POLICY, INDEX, T0 + timedelta(minutes=2)).state
    assert state.escalation_due is None
    state = joined(state, 3)
    assert state.digest_due == T0 + timedelta(hours=4)  # one ack_within after the first notice
    assert on_tick(state, POLICY, INDEX, T0 + timedelta(hours=3)).requests == []
    step = on_tick(state, POLICY, INDEX, T0 + timedelta(hours=4))
    [digest] = step.requests
    assert digest.kind is NotificationKind.update and digest.new_reports == 3
    assert digest.recipient.tier is Tier.school
    assert any(a.detail.get("digest") for a in step.audits)
    # more reports right after the digest wait a full ack_within for the next one
    later = on_update(
        step.state,
        make_update(MEDIUM, 9),
        POLICY,
        INDEX,
        T0 + timedelta(hours=4, minutes=1),
    ).state
    assert later.digest_due == T0 + timedelta(hours=8)
    nothing_yet = on_tick(later, POLICY, INDEX, T0 + timedelta(hours=7, minutes=59))
    assert nothing_yet.requests == []
    second = on_tick(later, POLICY, INDEX, T0 + timedelta(hours=8))
    assert [r.kind for r in second.requests] == [NotificationKind.update]
    assert second.requests[0].notification_id != digest.notification_id


def test_a_raise_to_critical_tells_the_added_tiers_once_and_restarts_the_clock() -> None:
    state = joined(opened(), 2)
    at = T0 + timedelta(minutes=10)
    step = on_update(state, make_update(CRITICAL, 3, at=at), POLICY, INDEX, at)
    told = {(r.recipient.tier, r.kind) for r in step.requests}
    assert told == {
        (Tier.district_office, NotificationKind.first_notice),
        (Tier.city_office, NotificationKind.first_notice),
        # a critical on the rules' own word: the police are told at once, as the route says
        (Tier.police, NotificationKind.first_notice),
    }
    assert all(r.severity is Severity.critical for r in step.requests)
    assert all(r.report_count == 4 for r in step.requests)
    assert step.state.severity is Severity.critical
    assert step.state.category is Category.sexual_exploitation
    assert step.state.escalation_due == at + timedelta(minutes=15)
    [updated] = [a for a in step.audits if a.event is AuditEventType.updated]
    assert updated.detail["raised_from"] == "medium"
    assert set(updated.detail["notified"]) == {"district_office", "city_office", "police"}
    # the school was told at step 0 and gets no second first notice
    assert Tier.school not in {r.recipient.tier for r in step.requests}
    # another critical report adds nobody
    again = on_update(step.state, make_update(CRITICAL, 4, at=at), POLICY, INDEX, at)
    assert again.requests == []


def test_grouping_never_lowers_the_severity() -> None:
    low = Decision(severity=Severity.low, category=Category.other, rules_version="v1")
    state = joined(opened(CRITICAL), 1, low)
    assert state.severity is Severity.critical


def test_a_model_only_raise_by_a_later_report_holds_the_police_for_review() -> None:
    raised = CRITICAL.model_copy(
        update={
            "model_version": "m1",
            "second_opinion": ModelView(
                model_version="m1",
                severity=Severity.critical,
                probability=0.8,
                category=Category.sexual_exploitation,
                category_probability=0.8,
                raised_from=Severity.medium,
            ),
        }
    )
    step = on_update(opened(), make_update(raised, 1), POLICY, INDEX, T0)
    assert Tier.police not in {r.recipient.tier for r in step.requests}
    assert step.state.withheld == [Tier.police]
    assert any(r.kind is NotificationKind.review for r in step.requests)


def test_an_update_before_its_incident_is_kept_and_applied_when_it_comes() -> None:
    early = on_update(None, make_update(CRITICAL, 1), POLICY, INDEX, T0).state
    assert early.incident is None and len(early.early_updates) == 1
    step = on_incident(early, make_incident(MEDIUM), POLICY, INDEX, T0)
    assert step.state.severity is Severity.critical
    assert step.state.report_count == 2
    assert step.state.early_updates == []
    assert Tier.police in {r.recipient.tier for r in step.requests}


def test_a_report_after_resolution_is_recorded_and_tells_nobody() -> None:
    resolve = IncidentAction(
        action_id="a-2",
        incident_id="inc-1",
        kind=ActionKind.resolve,
        tier=Tier.school,
        actor="bgh@example.vn",
        via="link",
        at=T0,
    )
    state = on_action(opened(), resolve, POLICY, INDEX, T0).state
    step = on_update(state, make_update(CRITICAL, 1), POLICY, INDEX, T0)
    assert step.requests == []
    assert step.state.severity is Severity.medium
    assert step.audits[0].detail["after_resolution"] is True
    assert step.state.next_due is None


def test_the_incident_page_shows_the_count_and_the_later_reports_without_contacts() -> None:
    state = on_update(
        opened(),
        make_update(MEDIUM, 1, description="Người lạ <b>vẽ bậy</b> lên màn hình"),
        POLICY,
        INDEX,
        T0,
    ).state
    claims = LinkClaims(
        incident_id="inc-1", recipient="bgh@example.vn", tier=Tier.school, purpose=LinkPurpose.act
    )
    page = render_action_page("vi", token="t", nonce="n", claims=claims, state=state)
    assert '<strong id="report-count">2</strong>' in page
    assert "Người lạ &lt;b&gt;vẽ bậy&lt;/b&gt; lên màn hình" in page
    assert "0911 111 111" not in page and "Học sinh 1" not in page
    alone = render_action_page("en", token="t", nonce="n", claims=claims, state=opened())
    assert "report-count" not in alone
