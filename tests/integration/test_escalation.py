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

import httpx
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
from schemas.topics import INCIDENTS_ACTIONS, NOTIFICATIONS_REQUESTED, NOTIFICATIONS_URGENT
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


def fast_policy(
    path: Path, ack_within: str, max_reminders: int = 2, *, grouping: bool = True
) -> Path:
    """The default policy with every deadline a few seconds long (and, for tests that need
    several incidents of one school told apart, grouping switched off)."""
    text = (DEFAULT_CONFIG_DIR / "policy.yaml").read_text("utf-8")
    text, replaced = re.subn(r"ack_within: \w+", f"ack_within: {ack_within}", text)
    assert replaced == 4
    text = text.replace(
        "escalation_ladder:",
        f"acknowledgement: {{max_reminders: {max_reminders}}}\nescalation_ladder:",
        1,
    )
    if not grouping:
        text += "\ngrouping: {enabled: false}\n"
    path.write_text(text, "utf-8")
    return path


@dataclass
class Pipeline:
    bootstrap: str
    prefix: str
    sink: Sink
    components: Components
    base_url: str

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
        return [r for r in self.all_first_requests() if r.incident_id == incident]

    def all_first_requests(self) -> list[NotificationRequest]:
        consumer = KafkaConsumer(
            NOTIFICATIONS_REQUESTED.name(self.prefix),
            NOTIFICATIONS_URGENT.name(self.prefix),
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=2000,
            isolation_level="read_committed",
        )
        try:
            found = [NotificationRequest.model_validate_json(m.value) for m in consumer]
        finally:
            consumer.close()
        return [r for r in found if r.step == 0]


@contextlib.contextmanager
def start_pipeline(
    kafka_bootstrap: str,
    isolation: str,
    tmp_path: Path,
    ack_within: str,
    *,
    intake: bool = False,
    env: dict[str, str] | None = None,
    grouping: bool = True,
) -> Iterator[Pipeline]:
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    sink, controller = start_sink(free_port())
    http_port = free_port()
    components = Components(
        {
            "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "ESCALATE_TOPIC_PREFIX": prefix,
            "ESCALATE_APP_ID": isolation,
            "ESCALATE_SMTP_HOST": "127.0.0.1",
            "ESCALATE_SMTP_PORT": str(controller.port),
            "ESCALATE_POLICY_FILE": str(
                fast_policy(tmp_path / "policy.yaml", ack_within, grouping=grouping)
            ),
            "ESCALATE_METRICS_PORT": "0",
            "ESCALATE_PUBLIC_URL": f"http://127.0.0.1:{http_port}",
            "ESCALATE_HTTP_PORT": str(http_port),
            "ESCALATE_INTAKE_API_KEYS": "test=test-key",
            "ESCALATE_SECRET_KEY": "test-secret",
            "ESCALATE_VAR_DIR": str(tmp_path / "var"),
            "ESCALATE_INSTANCE_ID": "one",
            **(env or {}),
        },
        tmp_path,
    )
    components.start(
        "processors", "grouper", "escalator", "notifier", *(["intake"] if intake else [])
    )
    try:
        yield Pipeline(kafka_bootstrap, prefix, sink, components, f"http://127.0.0.1:{http_port}")
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
    assert f"{pipeline.base_url}/a/" in escalation.body()
    assert "Nhắc lại / Reminder" in str(
        next(m for m in mails if m.kind == "reminder").msg["Subject"]
    )


@pytest.fixture
def slower(kafka_bootstrap: str, isolation: str, tmp_path: Path) -> Iterator[Pipeline]:
    """Deadlines long enough that an action taken right after the first notice precedes them."""
    with start_pipeline(kafka_bootstrap, isolation, tmp_path, "12s") as pipeline:
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
    time.sleep(25)  # two more deadlines: everyone has acknowledged, nothing may follow
    assert len(pipeline.sink.about(incident)) == settled


def test_an_escalator_killed_before_the_deadline_escalates_once_and_on_time(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    # The warm-up and the incident under test are the same report twice: kept apart.
    with start_pipeline(kafka_bootstrap, isolation, tmp_path, "10s", grouping=False) as pipeline:
        # A first report only to know the pipeline is up, so the deadline is not spent starting.
        warm_up = pipeline.report(BULLYING, category_hint="cyberbullying")
        # Five processes start at once (six with the spare); on a loaded machine that is slow.
        wait_for(lambda: pipeline.sink.about(warm_up), timeout_s=180, what="the pipeline to start")
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


LINK = re.compile(r"(http://\S+/a/\S+)")


def actions_on_topic(pipeline: Pipeline) -> list[bytes]:
    consumer = KafkaConsumer(
        INCIDENTS_ACTIONS.name(pipeline.prefix),
        bootstrap_servers=pipeline.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=2000,
        isolation_level="read_committed",
    )
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


def test_the_mailed_link_acknowledges_only_by_post_and_stops_the_climb(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    with start_pipeline(kafka_bootstrap, isolation, tmp_path, "12s", intake=True) as pipeline:
        wait_for(
            lambda: _answers(pipeline.base_url),
            what="the intake",
        )
        incident = pipeline.report(BULLYING, category_hint="cyberbullying")
        school, district = ADDRESSES[Tier.school], ADDRESSES[Tier.district_office]
        wait_for(
            lambda: (
                by_kind(pipeline.sink.about(incident)).get(("first_notice", 0)) == school | district
            ),
            what="the first notices",
        )
        mail = next(m for m in pipeline.sink.about(incident) if set(m.to) == school)
        found = LINK.search(mail.body())
        assert found, mail.body()
        link = found.group(1)

        # A mail scanner or a link preview opens the link: nothing may change.
        page = httpx.get(link, timeout=10)
        assert page.status_code == 200 and incident in page.text
        httpx.get(link, params={"lang": "en"}, timeout=10)
        assert actions_on_topic(pipeline) == []

        # The school leadership presses the button on the page.
        nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
        assert nonce
        answer = httpx.post(
            link,
            data={"action": "acknowledge", "nonce": nonce.group(1), "note": ""},
            headers={"Origin": pipeline.base_url},
            timeout=10,
        )
        assert answer.status_code == 303, answer.text
        wait_for(
            lambda: told(pipeline.sink.about(incident), "acknowledged") == school | district,
            timeout_s=30,
            what="everyone told of the acknowledgement",
        )
        news = next(m for m in pipeline.sink.about(incident) if m.kind == "acknowledged")
        assert "school" in news.body()
        # The deadline passes: the climb stopped, the city office is never told.
        due = pipeline.first_requests(incident)[0].ack_due_at.timestamp()
        time.sleep(max(0.0, due + 6 - time.time()))
        kinds = {m.kind for m in pipeline.sink.about(incident)}
        assert kinds == {"first_notice", "acknowledged"}
        status = httpx.get(link, timeout=10).text
        assert "school" in status


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_second_escalator_takes_over_a_killed_one_and_escalates_once(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    # Seven like reports of one school in seconds would rightly be one incident; this test
    # needs seven, spread over both workers' partitions.
    with start_pipeline(kafka_bootstrap, isolation, tmp_path, "15s", grouping=False) as pipeline:
        # A second worker under another name: the group splits the partitions between them.
        spare = Components({**pipeline.components.env, "ESCALATE_INSTANCE_ID": "two"}, tmp_path)
        (tmp_path / "spare").mkdir()
        spare.log_dir = tmp_path / "spare"
        spare.start("escalator")
        try:
            warm_up = pipeline.report(BULLYING, category_hint="cyberbullying")
            # Six processes start at once, the spare included; on a loaded machine that is slow.
            wait_for(
                lambda: pipeline.sink.about(warm_up), timeout_s=180, what="the pipeline to start"
            )
            time.sleep(5)  # let the group settle with both workers
            incidents = [
                pipeline.report(f"{BULLYING} ({n})", category_hint="cyberbullying")
                for n in range(6)
            ]
            wait_for(
                lambda: all(
                    any(m.kind == "first_notice" for m in pipeline.sink.about(i)) for i in incidents
                ),
                what="the first notices",
            )
            dues = {
                r.ack_due_at.timestamp()
                for r in pipeline.all_first_requests()
                if r.incident_id in incidents
            }
            first_due, due = min(dues), max(dues)
            # Worker "one" dies a second before the first deadline; "two" must take over.
            time.sleep(max(0.0, first_due - 1.0 - time.time()))
            pipeline.components.kill("escalator")
            killed = time.time()
            city = ADDRESSES[Tier.city_office]
            wait_for(
                lambda: all(
                    by_kind(pipeline.sink.about(i)).get(("escalation", 1)) == city
                    for i in incidents
                ),
                timeout_s=120,
                what="every incident escalated by the surviving worker",
            )
            time.sleep(3)
            due = max(
                r.ack_due_at.timestamp() for i in incidents for r in pipeline.first_requests(i)
            )
            for incident in incidents:
                escalations = [m for m in pipeline.sink.about(incident) if m.kind == "escalation"]
                assert len(escalations) == len(city), f"{incident} escalated twice"
            last = max(
                m.at for i in incidents for m in pipeline.sink.about(i) if m.kind == "escalation"
            )
            print(
                f"killed {first_due - killed:.1f} s before the first deadline;"
                f" the last escalation came {last - due:.1f} s after the last deadline"
            )
            # The survivor notices after the session timeout (10 s), then rebalances and reads
            # the state back; a step may be late by that, never missing, never doubled.
            assert last - due < 40
            assert spare.alive("escalator")
        finally:
            spare.stop_all()
