"""Urgent requests (critical, or a child said to be in danger) travel a lane of their own."""

from __future__ import annotations

from consumers.notifier.sender import SmtpConfig
from consumers.notifier.worker import Notifier, NotifierConfig
from schemas.common import Category, Severity
from schemas.incidents import Decision
from schemas.notifications import NotificationRequest
from schemas.topics import NOTIFICATIONS_REQUESTED, NOTIFICATIONS_URGENT, requests_topic_for
from stream_processors.routing.core import plan_notifications
from tests.fakes import T0, make_incident
from tests.unit.test_escalation import INDEX, POLICY


def requests(severity: Severity, danger: bool = False) -> list[NotificationRequest]:
    decision = Decision(severity=severity, category=Category.other, rules_version="v1")
    incident = make_incident(decision, danger=danger)
    return list(plan_notifications(incident, POLICY, INDEX, T0).notifications)


def test_critical_and_danger_go_urgent_the_rest_normal() -> None:
    for request in requests(Severity.critical):
        assert requests_topic_for(request) is NOTIFICATIONS_URGENT
    for request in requests(Severity.medium, danger=True):
        assert requests_topic_for(request) is NOTIFICATIONS_URGENT
    for severity in (Severity.high, Severity.medium, Severity.low):
        for request in requests(severity):
            assert requests_topic_for(request) is NOTIFICATIONS_REQUESTED


def test_each_lane_is_its_own_consumer_group_and_the_normal_one_keeps_its_name() -> None:
    smtp = SmtpConfig(host="127.0.0.1")
    normal = Notifier(NotifierConfig(smtp=smtp, topic_prefix="p.", app_id="x"))
    urgent = Notifier(NotifierConfig(smtp=smtp, topic_prefix="p.", app_id="x", lane="urgent"))
    assert (normal.source_topic, normal.group_id) == ("p.notifications.requested.v1", "x-notifier")
    assert (urgent.source_topic, urgent.group_id) == (
        "p.notifications.urgent.v1",
        "x-notifier-urgent",
    )
