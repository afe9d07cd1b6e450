"""No message can stop a consumer: the notifier and the audit writer on the real broker.

Each test puts a poison message in front of a good one, runs the consumer as it runs in
production (``run`` in a thread of its own, the shared Kafka loop), and shows the poison set
aside on the dead-letter topic with its reason, the good message handled, the offsets committed
past both, and the consumer still running. (The processors' case is in test_processors.py.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from consumers.audit import store
from consumers.audit.store import make_engine
from consumers.audit.worker import AuditConfig, AuditWriter
from consumers.notifier import worker as notifier_worker
from consumers.notifier.retry import RetryPolicy
from consumers.notifier.sender import SmtpConfig
from consumers.notifier.worker import Notifier, NotifierConfig
from escalate.topics_admin import ensure_topics
from schemas.audit import AuditEvent, AuditEventType, DeadLetter
from schemas.common import Category, Severity, Tier
from schemas.ids import event_id, notification_id
from schemas.notifications import NotificationRequest, Recipient
from schemas.topics import AUDIT_EVENTS, DEAD_LETTER, NOTIFICATIONS_REQUESTED
from tests.conftest import free_port

DESK = "tiep-nhan@so.example"

pytestmark = pytest.mark.kafka


class Sink:
    def __init__(self) -> None:
        self.mails: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(
            (
                list(envelope.rcpt_tos),
                message_from_bytes(envelope.original_content, policy=default_policy),
            )
        )
        return "250 OK"


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def request(incident: str, **overrides: Any) -> NotificationRequest:
    email = "bgh@thcs.example"
    fields: dict[str, Any] = {
        "notification_id": notification_id(incident, email, 0),
        "incident_id": incident,
        "step": 0,
        "recipient": Recipient(tier=Tier.school, name="Ban giám hiệu", email=email),
        "severity": Severity.critical,
        "category": Category.sexual_exploitation,
        "school_code": "HN-BD-THCS-001",
        "school_name": "Trường THCS Phan Chu Trinh",
        "description": "Một người lạ nhắn tin hẹn gặp riêng một học sinh lớp 7.",
        "received_at": datetime(2026, 3, 2, 13, 5, tzinfo=UTC),
        "ack_due_at": datetime(2026, 3, 2, 13, 20, tzinfo=UTC),
        "report_ids": [f"r-{incident}"],
        "tracking_codes": ["ESC-7K3M-9Q2X"],
        "rules_version": "abc123",
    }
    fields.update(overrides)
    return NotificationRequest(**fields)


def send_raw(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value in items:
        producer.send(topic, key=key, value=value).get(10)
    producer.close()


def read_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=2000,
        isolation_level="read_committed",
    )
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


class Running:
    """A consumer's ``run`` in its own thread; the test fails if it ever returns early."""

    def __init__(self, target: Callable[[threading.Event], None]) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

        def body() -> None:
            try:
                target(self.stop)
            except BaseException as exc:  # surfaced in the test thread
                self.errors.append(exc)

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive() and not self.errors

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.errors, self.errors


def test_the_notifier_sets_a_poison_request_aside_and_delivers_the_next(
    kafka_bootstrap: str,
    isolation: str,
    sink: tuple[Sink, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler, port = sink
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    # No value the contract accepts makes the renderer raise (tests/unit/test_render_properties
    # checks that), so the fault is planted: rendering raises for one incident.
    real_render = notifier_worker.render_email

    def render(req: NotificationRequest, sender: str, **kwargs: Any) -> Any:
        if req.incident_id == "inc-poison":
            raise OverflowError("planted fault")
        return real_render(req, sender, **kwargs)

    monkeypatch.setattr(notifier_worker, "render_email", render)
    poison = request("inc-poison")
    # The date that used to kill the notifier (moved to Hanoi time it left datetime's range).
    far = request("inc-far-future", occurred_at=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    good = request("inc-good", severity=Severity.high, category=Category.cyberbullying)
    topic = NOTIFICATIONS_REQUESTED.name(prefix)
    # One key, so all three sit in one partition, in this order.
    send_raw(
        kafka_bootstrap,
        topic,
        [(b"same", r.model_dump_json().encode()) for r in (poison, far, good)],
    )
    config = NotifierConfig(
        smtp=SmtpConfig(host="127.0.0.1", port=port, timeout_s=5),
        retry=RetryPolicy(max_attempts=2, backoff_s=0.05),
        topic_prefix=prefix,
        app_id=isolation,
        fallback_recipients=(DESK,),
    )
    registry = CollectorRegistry()
    notifier = Notifier(config, registry=registry)
    running = Running(lambda stop: notifier.run(kafka_bootstrap, stop))
    try:
        wait_until(lambda: len(handler.mails) >= 3, 60, "two notifications and the desk's mail")
        wait_until(
            lambda: committed(kafka_bootstrap, notifier.group_id, topic) == 3, 30, "the commit"
        )
        assert running.alive()
    finally:
        running.close()

    by_incident = {str(msg["X-Escalate-Incident"]): rcpts for rcpts, msg in handler.mails}
    assert by_incident == {
        "inc-far-future": ["bgh@thcs.example"],
        "inc-good": ["bgh@thcs.example"],
        "inc-poison": [DESK],  # only the desk, and only id and severity
    }
    far_mail = next(m for _, m in handler.mails if m["X-Escalate-Incident"] == "inc-far-future")
    assert "9999-12-31T23:59:59+00:00" in far_mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    [letter] = [
        DeadLetter.model_validate_json(v)
        for v in read_all(kafka_bootstrap, DEAD_LETTER.name(prefix))
    ]
    assert letter.stage == "notifier" and letter.incident_id == "inc-poison"
    assert letter.reason.startswith("failed: notifier raised OverflowError in render")
    assert (
        registry.get_sample_value(
            "escalate_dead_letters_total", {"stage": "notifier", "reason": "failed"}
        )
        == 1
    )


def test_the_audit_writer_sets_a_poison_event_aside_and_records_the_next(
    kafka_bootstrap: str, isolation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumers.audit import worker as audit_worker

    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    engine: Engine = make_engine(f"sqlite:///{tmp_path}/audit.db")
    store.migrate(engine)
    real_record = audit_worker.record

    def record(session: Any, event: AuditEvent) -> bool:
        if event.event_id == "poison-event":
            raise KeyError("planted fault")
        return real_record(session, event)

    monkeypatch.setattr(audit_worker, "record", record)
    at = datetime(2026, 3, 2, 13, 5, tzinfo=UTC)
    poison = AuditEvent(
        event_id="poison-event", incident_id="inc-a", event=AuditEventType.routed, at=at
    )
    good = AuditEvent(
        event_id=event_id("inc-a", "classified"),
        incident_id="inc-a",
        event=AuditEventType.classified,
        at=at,
    )
    topic = AUDIT_EVENTS.name(prefix)
    send_raw(
        kafka_bootstrap, topic, [(b"inc-a", e.model_dump_json().encode()) for e in (poison, good)]
    )
    writer = AuditWriter(
        AuditConfig(topic_prefix=prefix, app_id=isolation), engine, registry=CollectorRegistry()
    )
    running = Running(lambda stop: writer.run(kafka_bootstrap, stop))

    def trail() -> list[str]:
        return [row["event"] for row in store.timeline(engine, "inc-a")]

    try:
        # The good event is written, and the poison one's dead letter comes back round as a
        # dead_lettered event on the same incident's trail.
        wait_until(lambda: trail() == ["classified", "dead_lettered"], 60, "the trail")
        assert running.alive()
    finally:
        running.close()
    [row] = [r for r in store.timeline(engine, "inc-a") if r["event"] == "dead_lettered"]
    assert row["detail"]["stage"] == "audit" and "KeyError" in row["detail"]["reason"]
    assert "planted fault" not in str(row["detail"])
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        assert store.verify_chain(session, "inc-a") == []
