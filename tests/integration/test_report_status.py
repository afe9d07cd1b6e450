"""Reporters following their report up, against the real broker: the intake issues a code, the
incident view learns it from reports.submitted and the state topic, and an addition from the
status page lands on reports.submitted as a follow-up of the same incident."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry

from consumers.kafka_io import topic_partitions
from escalate.topics_admin import ensure_topics
from producers.intake.app import create_app
from producers.intake.incidents import IncidentView, ReportStatus
from producers.intake.publisher import ReportPublisher
from schemas.common import Tier
from schemas.escalation import Acknowledgement, EscalationState, TierState
from schemas.ids import incident_id_for_report
from schemas.reports import ReportSubmitted
from schemas.topics import ESCALATION_STATE, REPORTS_SUBMITTED
from tests.action_support import make_state, publish_state

pytestmark = pytest.mark.kafka

KEY = "status-test-key"
SCHOOL = "HN-BD-THCS-001"
REPORT: dict[str, Any] = {
    "channel": "app",
    "reporter_role": "parent",
    "school_code": SCHOOL,
    "description": "Một người lạ vào lớp học trực tuyến của con tôi và nhắn tin riêng đòi ảnh.",
}
ADDITION = "Người đó vừa gửi thêm tin nhắn qua Zalo, hẹn gặp con tôi ở cổng trường."


@dataclass
class Intake:
    client: TestClient
    bootstrap: str
    prefix: str
    view: IncidentView
    registry: CollectorRegistry

    def submitted(self) -> list[ReportSubmitted]:
        return [
            ReportSubmitted.model_validate_json(v)
            for v in read_to_end(self.bootstrap, REPORTS_SUBMITTED.name(self.prefix))
        ]

    def status_of(self, code: str) -> dict[str, Any]:
        resp = self.client.get(f"/v1/reports/{code}")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body


def read_to_end(bootstrap: str, topic: str) -> list[bytes]:
    """Every committed value on the topic up to its end offsets of this moment."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    try:
        partitions = topic_partitions(consumer, topic)
        assert partitions, f"topic {topic} does not exist"
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        values: list[bytes] = []
        deadline = time.monotonic() + 20
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records if r.value is not None)
        return values
    finally:
        consumer.close()


def eventually(check: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


@pytest.fixture
def intake(kafka_bootstrap: str, isolation: str) -> Iterator[Intake]:
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    publisher = ReportPublisher(kafka_bootstrap, prefix)
    view = IncidentView(kafka_bootstrap, prefix, poll_ms=200)
    view.start()
    registry = CollectorRegistry()
    try:
        assert view.wait_ready(30), "incident view did not catch up"
        app = create_app(publisher, {KEY: "test-app"}, registry, status_view=view)
        with TestClient(app) as client:
            yield Intake(client, kafka_bootstrap, prefix, view, registry)
    finally:
        view.close()
        publisher.close()


def submit(intake: Intake) -> tuple[str, str]:
    resp = intake.client.post("/v1/reports", json=REPORT, headers={"X-API-Key": KEY})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    return body["report_id"], body["tracking_code"]


def acknowledged_state(incident_id: str, codes: list[str]) -> EscalationState:
    """What the escalator writes once the school acknowledged (a stub of its real state)."""
    state = make_state(incident_id)
    assert state.incident is not None
    incident = state.incident.model_copy(update={"tracking_codes": codes})
    tiers = dict(state.tiers)
    tiers[Tier.school] = TierState(
        notified_at_step=0,
        acknowledged=Acknowledgement(by="bgh@school.example", at=datetime.now(UTC), via="link"),
    )
    return state.model_copy(
        update={"incident": incident, "tiers": tiers, "updated_at": datetime.now(UTC)}
    )


def test_a_submitted_report_is_received_then_acknowledged(intake: Intake) -> None:
    report_id, code = submit(intake)
    incident_id = incident_id_for_report(report_id)

    status = intake.status_of(code.lower().replace("-", ""))
    assert status["tracking_code"] == code
    assert status["status"] == ReportStatus.received
    assert set(status) == {"tracking_code", "status", "updated_at"}

    publish_state(
        intake.bootstrap,
        ESCALATION_STATE.name(intake.prefix),
        acknowledged_state(incident_id, [code]),
    )
    eventually(lambda: intake.status_of(code)["status"] == ReportStatus.acknowledged)
    page = intake.client.get("/report/status", params={"code": code, "lang": "en"})
    assert page.status_code == 200
    assert "Taken in hand" in page.text
    assert incident_id not in page.text


def test_another_intake_learns_the_code_from_the_topic(intake: Intake) -> None:
    """A code issued by one intake is known to every other once it reads reports.submitted."""
    report_id, code = submit(intake)
    other = IncidentView(intake.bootstrap, intake.prefix, poll_ms=200)
    other.start()
    try:
        assert other.wait_ready(30)
        found = eventually(lambda: other.find_code(code))
        assert found.incident_id == incident_id_for_report(report_id)
        assert found.school_code == SCHOOL
        assert found.status is ReportStatus.received
    finally:
        other.close()


def test_unknown_code_is_404(intake: Intake) -> None:
    resp = intake.client.get("/v1/reports/ESC-ZZZZ-ZZZZ")
    assert resp.status_code == 404
    assert "no report with this tracking code" in resp.json()["error"]
    value = intake.registry.get_sample_value(
        "escalate_report_status_lookups_total", {"outcome": "unknown"}
    )
    assert value == 1


def test_additions_are_follow_ups_of_the_same_incident(intake: Intake) -> None:
    report_id, code = submit(intake)
    incident_id = incident_id_for_report(report_id)

    page = intake.client.post(
        "/report/status?lang=en",
        data={"code": code.lower(), "description": ADDITION, "immediate_danger": "1"},
    )
    assert page.status_code == 201, page.text
    api = intake.client.post(
        f"/v1/reports/{code}/updates",
        json={"channel": "app", "reporter_role": "parent", "description": ADDITION},
    )
    assert api.status_code == 202, api.text

    stored = {s.tracking_code: s for s in intake.submitted()}
    assert set(stored) == {code, api.json()["tracking_code"], *_codes_in(page.text)}
    additions = [s for s in stored.values() if s.tracking_code != code]
    assert len(additions) == 2
    for added in additions:
        assert added.follow_up_of == incident_id
        assert added.report.school_code == SCHOOL
        assert added.report.description == ADDITION
    by_page = next(a for a in additions if a.intake_client == "web_form")
    assert by_page.report.channel.value == "web_form"
    assert by_page.report.immediate_danger is True

    # The additions' own codes follow the incident: acknowledged with it.
    codes = [code, *(a.tracking_code for a in additions)]
    publish_state(
        intake.bootstrap,
        ESCALATION_STATE.name(intake.prefix),
        acknowledged_state(incident_id, codes),
    )
    for each in codes:
        eventually(lambda c=each: intake.status_of(c)["status"] == ReportStatus.acknowledged)


def test_a_code_grouped_into_another_incident_follows_it(intake: Intake) -> None:
    first_id, first_code = submit(intake)
    _, later_code = submit(intake)
    # The grouper joined the later report to the first incident; the escalator lists its code.
    state = acknowledged_state(incident_id_for_report(first_id), [first_code, later_code])
    state = state.model_copy(
        update={
            "resolved": Acknowledgement(
                by="police-system", at=datetime.now(UTC) + timedelta(seconds=1), via="api"
            )
        }
    )
    publish_state(intake.bootstrap, ESCALATION_STATE.name(intake.prefix), state)
    eventually(lambda: intake.status_of(later_code)["status"] == ReportStatus.resolved)
    found = intake.view.find_code(later_code)
    assert found is not None
    assert found.incident_id == incident_id_for_report(first_id)


def _codes_in(html: str) -> list[str]:
    return re.findall(r'id="tracking-code">([^<]+)<', html)
