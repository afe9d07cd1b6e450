"""Timed escalation on the real broker: processors, escalator and notifier as separate processes,
mail into a real SMTP server, a policy whose deadlines are seconds."""

from __future__ import annotations

import collections
import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer

from escalate.settings import DEFAULT_CONFIG_DIR
from escalate.topics_admin import ensure_topics
from producers.intake.publisher import ReportPublisher
from schemas.actions import ActionKind, IncidentAction
from schemas.common import Tier
from schemas.notifications import NotificationRequest
from schemas.reports import ReportIn
from schemas.topics import INCIDENTS_ACTIONS, NOTIFICATIONS_REQUESTED
from tests.conftest import free_port
from tests.services.pipeline import Components, Mail, Sink, start_sink, wait_for

pytestmark = pytest.mark.kafka

DIRECTORY = yaml.safe_load((DEFAULT_CONFIG_DIR / "directory.yaml").read_text("utf-8"))
SCHOOL = "HN-BD-THCS-001"
BD = DIRECTORY["districts"][0]
ADDRESSES = {
    Tier.school: set(BD["schools"][0]["leadership_emails"]),
    Tier.district_office: set(BD["office"]["emails"]),
    Tier.city_office: set(DIRECTORY["city_office"]["emails"]),
    Tier.police: set(BD["police"]["emails"]) | set(DIRECTORY["police"]["emails"]),
}


def fast_policy(path: Path, ack_within: str, max_reminders: int = 2) -> Path:
    """The default policy with every deadline a few seconds long."""
    text = (DEFAULT_CONFIG_DIR / "policy.yaml").read_text("utf-8")
    text, replaced = re.subn(r"ack_within: \w+", f"ack_within: {ack_within}", text)
    assert replaced == 4
    text = text.replace(
        "escalation_ladder:",
        f"acknowledgement: {{max_reminders: {max_reminders}}}\nescalation_ladder:",
        1,
    )
    path.write_text(text, "utf-8")
    return path


@dataclass
class Pipeline:
    bootstrap: str
    prefix: str
    sink: Sink
    components: Components

    def report(self, description: str, **extra: object) -> str:
        publisher = ReportPublisher(self.bootstrap, self.prefix)
        try:
            report = ReportIn.model_validate(
                {
                    "channel": "app",
                    "reporter_role": "teacher",
                    "school_code": SCHOOL,
                    "description": description,
                    **extra,
                }
            )
            return f"inc-{publisher.publish(report, 'test').report_id}"
        finally:
            publisher.close()

    def act(self, incident: str, kind: ActionKind, tier: Tier) -> None:
        action = IncidentAction(
            action_id=str(uuid.uuid4()),
            incident_id=incident,
            kind=kind,
            tier=tier,
            actor=sorted(ADDRESSES[tier])[0],
            via="api",
            at=datetime.now(UTC),
        )
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        producer.send(
            INCIDENTS_ACTIONS.name(self.prefix),
            key=incident.encode(),
            value=action.model_dump_json().encode(),
        ).get(10)
        producer.close()

    def first_requests(self, incident: str) -> list[NotificationRequest]:
        consumer = KafkaConsumer(
            NOTIFICATIONS_REQUESTED.name(self.prefix),
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=2000,
            isolation_level="read_committed",
        )
        try:
            found = [NotificationRequest.model_validate_json(m.value) for m in consumer]
        finally:
            consumer.close()
        return [r for r in found if r.incident_id == incident and r.step == 0]


@contextlib.contextmanager
def start_pipeline(
    kafka_bootstrap: str, isolation: str, tmp_path: Path, ack_within: str
) -> Iterator[Pipeline]:
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    sink, controller = start_sink(free_port())
    components = Components(
        {
            "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "ESCALATE_TOPIC_PREFIX": prefix,
            "ESCALATE_APP_ID": isolation,
            "ESCALATE_SMTP_HOST": "127.0.0.1",
            "ESCALATE_SMTP_PORT": str(controller.port),
            "ESCALATE_POLICY_FILE": str(fast_policy(tmp_path / "policy.yaml", ack_within)),
            "ESCALATE_METRICS_PORT": "0",
            "ESCALATE_PUBLIC_URL": "https://escalate.example",
            "ESCALATE_SECRET_KEY": "test-secret",
            "ESCALATE_VAR_DIR": str(tmp_path / "var"),
            "ESCALATE_INSTANCE_ID": "one",
        },
        tmp_path,
    )
    components.start("processors", "escalator", "notifier")
    try:
        yield Pipeline(kafka_bootstrap, prefix, sink, components)
    finally:
        components.stop_all()
        controller.stop()


@pytest.fixture
def pipeline(kafka_bootstrap: str, isolation: str, tmp_path: Path) -> Iterator[Pipeline]:
    with start_pipeline(kafka_bootstrap, isolation, tmp_path, "4s") as pipeline:
        yield pipeline


def told(mails: list[Mail], kind: str) -> set[str]:
    return {a for m in mails if m.kind == kind for a in m.to}


def by_kind(mails: list[Mail]) -> dict[tuple[str, int], set[str]]:
    out: dict[tuple[str, int], set[str]] = collections.defaultdict(set)
    for mail in mails:
        out[(mail.kind, mail.step)] |= set(mail.to)
    return dict(out)


BULLYING = "Một nhóm bạn lập nhóm chat để chế giễu, xúc phạm em mỗi ngày và đăng ảnh chế của em."
GROOMING = "Một người lạ nhắn tin đòi con tôi gửi ảnh riêng tư và hẹn gặp con ở quán net tối nay."


def test_a_high_report_nobody_acknowledges_climbs_to_the_city_office_never_the_police(
    pipeline: Pipeline,
) -> None:
    incident = pipeline.report(BULLYING, category_hint="cyberbullying")
    school, district, city = (
        ADDRESSES[t] for t in (Tier.school, Tier.district_office, Tier.city_office)
    )
    wait_for(
        lambda: (
            by_kind(pipeline.sink.about(incident)).get(("first_notice", 0)) == school | district
        ),
        what="the first notices",
    )
    wait_for(
        lambda: by_kind(pipeline.sink.about(incident)).get(("escalation", 1)) == city,
        timeout_s=60,
        what="the escalation to the city office",
    )
    assert by_kind(pipeline.sink.about(incident))[("reminder", 1)] == school | district
    # Reminders at the top of the ladder (2 in this policy), then silence; never the police.
    wait_for(
        lambda: ("reminder", 3) in by_kind(pipeline.sink.about(incident)),
        timeout_s=60,
        what="the last reminder",
    )
    time.sleep(10)  # two more deadlines: nothing may follow
    kinds = by_kind(pipeline.sink.about(incident))
    assert set(kinds) == {
        ("first_notice", 0),
        ("reminder", 1),
        ("escalation", 1),
        ("reminder", 2),
        ("reminder", 3),
    }
    assert kinds[("reminder", 3)] == school | district | city
    everyone = {a for mail in pipeline.sink.about(incident) for a in mail.to}
    assert not everyone & ADDRESSES[Tier.police]
    mails = pipeline.sink.about(incident)
    assert len({m.msg["Message-ID"] for m in mails}) == len(mails), "a mail was sent twice"
    escalation = next(m for m in mails if m.kind == "escalation")
    assert "Chuyển cấp / Escalated" in str(escalation.msg["Subject"])
    assert "https://escalate.example/a/" in escalation.body()
    assert "Nhắc lại / Reminder" in str(
        next(m for m in mails if m.kind == "reminder").msg["Subject"]
    )


@pytest.fixture
def slower(kafka_bootstrap: str, isolation: str, tmp_path: Path) -> Iterator[Pipeline]:
    """Deadlines long enough that an action taken right after the first notice precedes them."""
    with start_pipeline(kafka_bootstrap, isolation, tmp_path, "8s") as pipeline:
        yield pipeline


def test_critical_each_organisation_is_reminded_until_it_acknowledges_itself(
    slower: Pipeline,
) -> None:
    pipeline = slower
    incident = pipeline.report(GROOMING, immediate_danger=True)
    everyone = set().union(*ADDRESSES.values())
    wait_for(
        lambda: by_kind(pipeline.sink.about(incident)).get(("first_notice", 0)) == everyone,
        what="the first notices",
    )
    pipeline.act(incident, ActionKind.acknowledge, Tier.school)
    wait_for(
        lambda: told(pipeline.sink.about(incident), "acknowledged") == everyone,
        timeout_s=30,
        what="everyone told of the school's acknowledgement",
    )
    news = next(m for m in pipeline.sink.about(incident) if m.kind == "acknowledged")
    assert "school" in str(news.msg["Subject"]) and "Đã xác nhận / Acknowledged" in str(
        news.msg["Subject"]
    )
    # Reminders go to every organisation but the school, which acknowledged for itself.
    wait_for(
        lambda: (
            by_kind(pipeline.sink.about(incident)).get(("reminder", 1))
            == everyone - ADDRESSES[Tier.school]
        ),
        timeout_s=30,
        what="the reminders",
    )
    for tier in (Tier.district_office, Tier.city_office, Tier.police):
        pipeline.act(incident, ActionKind.acknowledge, tier)
    wait_for(
        lambda: (
            sum(m.kind == "acknowledged" for m in pipeline.sink.about(incident))
            == 4 * sum(len(a) for a in ADDRESSES.values())
        ),
        timeout_s=30,
        what="every acknowledgement announced",
    )
    settled = len(pipeline.sink.about(incident))
    time.sleep(17)  # two more deadlines: everyone has acknowledged, nothing may follow
    assert len(pipeline.sink.about(incident)) == settled


def test_an_escalator_killed_before_the_deadline_escalates_once_and_on_time(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    with start_pipeline(kafka_bootstrap, isolation, tmp_path, "10s") as pipeline:
        # A first report only to know the pipeline is up, so the deadline is not spent starting.
        warm_up = pipeline.report(BULLYING, category_hint="cyberbullying")
        wait_for(lambda: pipeline.sink.about(warm_up), what="the pipeline to start")
        incident = pipeline.report(BULLYING, category_hint="cyberbullying")
        wait_for(
            lambda: any(m.kind == "first_notice" for m in pipeline.sink.about(incident)),
            what="the first notices",
        )
        due = pipeline.first_requests(incident)[0].ack_due_at.timestamp()
        # Kill it a second before the deadline and keep it down across the deadline.
        time.sleep(max(0.0, due - 1.0 - time.time()))
        pipeline.components.kill("escalator")
        killed = time.time()
        assert killed < due, "the escalator was not killed before the deadline"
        time.sleep(2)
        pipeline.components.start("escalator")
        restarted = time.time()
        city = ADDRESSES[Tier.city_office]
        wait_for(
            lambda: by_kind(pipeline.sink.about(incident)).get(("escalation", 1)) == city,
            timeout_s=90,
            what="the escalation after the restart",
        )
        time.sleep(3)  # a duplicate would come right behind
        escalations = [m for m in pipeline.sink.about(incident) if m.kind == "escalation"]
        assert len(escalations) == len(city), "escalated twice"
        late = min(m.at for m in escalations) - due
        down = restarted - killed
        print(
            f"killed {due - killed:.1f} s before the deadline, down {down:.1f} s,"
            f" escalation late by {late:.1f} s"
        )
        # Late by no more than the restart (the new worker's start-up, group join and state
        # read), with the mail's own path on top; never early.
        assert late > -0.5
        assert late < down + 10
