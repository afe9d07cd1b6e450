"""``group_report``: the grouper's pure step from a classified report to a new incident or an
update of an open one, with the audit event that says why."""

from __future__ import annotations

from datetime import timedelta

from schemas.audit import AuditEventType
from schemas.common import Category, Severity
from schemas.grouping import GroupingPolicy
from schemas.incidents import Decision, IncidentClassified, IncidentUpdate
from schemas.topics import AUDIT_EVENTS, INCIDENTS_CLASSIFIED, INCIDENTS_UPDATES
from stream_processors.grouping.worker import group_report
from tests.fakes import T0, make_incident

KEY = b"test-grouping-key"
POLICY = GroupingPolicy()
MEDIUM = Decision(severity=Severity.medium, category=Category.intrusion, rules_version="v1")
ZOOM = "Có người lạ vào lớp Zoom 812 3456 7890 bật nhạc và chửi bậy, cô phải tắt buổi học."


def report(
    n: int, text: str = ZOOM, minutes: float = 0, school: str | None = None
) -> IncidentClassified:
    incident = make_incident(
        MEDIUM,
        description=text,
        received_at=T0 + timedelta(minutes=minutes),
        incident_id=f"inc-r{n}",
    )
    update: dict[str, object] = {"report_ids": [f"r{n}"], "tracking_codes": [f"ESC-TEST-{n:04d}"]}
    if school is not None:
        update["school_code"] = school
        update["report"] = incident.report.model_copy(update={"school_code": school})
    return incident.model_copy(update=update)


def test_the_first_report_opens_an_incident_and_a_later_one_joins_it() -> None:
    first = group_report(None, report(1), POLICY, KEY, T0)
    assert first.outcome == "new"
    [(spec, key, value)] = first.outputs
    assert spec is INCIDENTS_CLASSIFIED and key == "inc-r1" and value == report(1)

    second = group_report(
        first.state, report(2, "zoom 81234567890 co nguoi la vao lop", 3), POLICY, KEY, T0
    )
    assert second.outcome == "link"
    (s1, k1, update), (s2, k2, audit) = second.outputs
    assert (s1, k1, s2, k2) == (INCIDENTS_UPDATES, "inc-r1", AUDIT_EVENTS, "inc-r1")
    assert isinstance(update, IncidentUpdate) and update.report_id == "r2"
    assert update.tracking_code == "ESC-TEST-0002" and update.match.label == "zoom"
    assert audit.event is AuditEventType.grouped and audit.report_ids == ["r2"]
    assert audit.detail["would_have_been"] == "inc-r2"
    # why, without what: no meeting id and no report text in the audit or the state
    assert "81234567890" not in str(audit.detail) and "nguoi" not in str(audit.detail)
    assert "81234567890" not in second.state.model_dump_json()


def test_a_report_past_the_window_opens_its_own_incident() -> None:
    first = group_report(None, report(1), POLICY, KEY, T0)
    late = group_report(first.state, report(2, minutes=31), POLICY, KEY, T0)
    assert late.outcome == "new"


def test_a_follow_up_joins_its_incident_whatever_it_says() -> None:
    follow = report(3, "Em muốn bổ sung: hôm sau người đó nhắn tin riêng cho em.", 600).model_copy(
        update={"follow_up_of": "inc-r1"}
    )
    result = group_report(None, follow, POLICY, KEY, T0)
    assert result.outcome == "follow_up"
    update = result.outputs[0][2]
    assert isinstance(update, IncidentUpdate) and update.incident_id == "inc-r1"


def test_grouping_switched_off_opens_an_incident_per_report() -> None:
    off = GroupingPolicy(enabled=False)
    first = group_report(None, report(1), off, KEY, T0)
    second = group_report(first.state, report(2), off, KEY, T0)
    assert (first.outcome, second.outcome) == ("new", "new")
