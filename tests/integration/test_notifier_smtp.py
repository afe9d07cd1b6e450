"""The notifier against a real SMTP server (aiosmtpd): delivery, retries, refusals, the outbox."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from prometheus_client import CollectorRegistry

from consumers.kafka_io import Outgoing, Unavailable
from consumers.notifier.render import message_id_for, render_email
from consumers.notifier.retry import RetryPolicy
from consumers.notifier.sender import SendError, SmtpConfig, send
from consumers.notifier.worker import Notifier, NotifierConfig
from consumers.outbox import OutboxServer
from escalate.settings import Settings
from schemas.audit import AuditEvent, AuditEventType, DeadLetter
from schemas.common import Category, Severity, Tier
from schemas.ids import notification_id
from schemas.notifications import (
    DeliveryResult,
    DeliveryStatus,
    NotificationRequest,
    Recipient,
)
from schemas.reports import ReporterContact
from tests.fakes import FakeRecord

DESCRIPTION = "Một người lạ hẹn gặp em ở cổng trường sau giờ học và bảo em không được kể với ai."


def make_request(**overrides: Any) -> NotificationRequest:
    tier = overrides.pop("tier", Tier.district_office)
    email = overrides.pop("email", "phong.gd@bd.example")
    incident = "inc-r-0042"
    fields: dict[str, Any] = {
        "notification_id": notification_id(incident, email, 0),
        "incident_id": incident,
        "step": 0,
        "recipient": Recipient(tier=tier, name="Phòng GDĐT Ba Đình", email=email),
        "severity": Severity.critical,
        "category": Category.sexual_exploitation,
        "school_code": "THCS-BD-01",
        "school_name": "Trường THCS Nguyễn Trãi",
        "district_name": "Ba Đình",
        "description": DESCRIPTION,
        "received_at": datetime(2026, 3, 2, 13, 5, tzinfo=UTC),
        "ack_due_at": datetime(2026, 3, 2, 13, 20, tzinfo=UTC),
        "report_ids": ["r-0042"],
        "tracking_codes": ["ESC-7K3M-9Q2X"],
        "reasons": ["adult asks to meet a pupil"],
        "rules_version": "abc123def456",
        "contact": ReporterContact(name="Trần Thị B", phone="0987 654 321"),
    }
    fields.update(overrides)
    return NotificationRequest(**fields)


REJECTED = "nobody@bd.example"
GREYLISTED = "later@bd.example"


class Capture:
    """aiosmtpd handler that keeps messages and refuses some recipients like a real server."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address == REJECTED:
            return "550 5.1.1 no such mailbox"
        if address == GREYLISTED:
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DESK = "tiep-nhan@so.example"


@dataclass
class Smtp:
    handler: Capture
    controller: Controller
    config: NotifierConfig

    def relay_on(self, port: int, **retry: Any) -> NotifierConfig:
        """The same notifier config, pointed at another port (often one nobody listens on)."""
        return replace(
            self.config,
            smtp=replace(self.config.smtp, port=port),
            retry=replace(self.config.retry, **retry),
        )


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[Smtp]:
    handler = Capture()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    config = NotifierConfig(
        smtp=SmtpConfig(host="127.0.0.1", port=port, timeout_s=5),
        retry=RetryPolicy(max_attempts=4, backoff_s=0.05),
        topic_prefix="t.",
        fallback_recipients=(DESK,),
    )
    try:
        yield Smtp(handler, controller, config)
    finally:
        controller.stop()


def record_for(req: NotificationRequest, offset: int = 7) -> FakeRecord:
    return FakeRecord(
        "t.notifications.requested.v1",
        2,
        offset,
        req.incident_id.encode(),
        req.model_dump_json().encode(),
    )


def by_topic(out: list[Outgoing]) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for item in out:
        found.setdefault(item.topic, []).append(item.value)
    return found


def parse(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


# ---- sender ----


def test_send_delivers_rendered_message(smtp: Smtp) -> None:
    req = make_request()
    asyncio.run(send(render_email(req, "escalate@so.example"), smtp.config.smtp))
    [(rcpts, raw)] = smtp.handler.messages
    assert rcpts == ["phong.gd@bd.example"]
    msg = parse(raw)
    assert msg["Message-ID"] == message_id_for(req)
    assert msg["X-Escalate-Incident"] == req.incident_id
    assert msg["Date"] is not None
    assert str(msg["Subject"]).startswith("[ESCALATE][CRITICAL] sexual_exploitation — Trường THCS")
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and DESCRIPTION in body.get_content()


def test_send_classifies_failures(smtp: Smtp) -> None:
    def attempt(email: str, relay: SmtpConfig) -> SendError:
        msg = render_email(make_request(email=email), "escalate@so.example")
        with pytest.raises(SendError) as caught:
            asyncio.run(send(msg, relay))
        return caught.value

    refused = attempt(REJECTED, smtp.config.smtp)
    assert not refused.transient and refused.code == 550 and not refused.unreachable
    greylisted = attempt(GREYLISTED, smtp.config.smtp)
    assert greylisted.transient and greylisted.code == 451 and not greylisted.unreachable
    down = attempt("x@bd.example", replace(smtp.config.smtp, port=free_port()))
    assert down.transient and down.unreachable


# ---- the notifier's per-record core ----


def make_notifier(config: NotifierConfig, **kwargs: Any) -> tuple[Notifier, CollectorRegistry]:
    registry = CollectorRegistry()
    return Notifier(config, registry=registry, **kwargs), registry


def test_delivery_publishes_result_and_audit(smtp: Smtp, caplog: pytest.LogCaptureFixture) -> None:
    lines: list[str] = []
    notifier, registry = make_notifier(smtp.config, print_deliveries=True, console=lines.append)
    req = make_request()
    with caplog.at_level(logging.DEBUG, logger="escalate"):
        out = notifier.deliver(record_for(req))
    assert out is not None
    topics = by_topic(out)
    assert set(topics) == {"t.notifications.results.v1", "t.audit.events.v1"}
    assert all(o.key == req.incident_id.encode() for o in out)

    result = DeliveryResult.model_validate_json(topics["t.notifications.results.v1"][0])
    assert result.status is DeliveryStatus.delivered and result.attempts == 1
    assert result.message_id == message_id_for(req)

    audit = AuditEvent.model_validate_json(topics["t.audit.events.v1"][0])
    assert audit.event is AuditEventType.notified
    assert audit.report_ids == req.report_ids and audit.tracking_codes == req.tracking_codes
    assert audit.detail["tier"] == "district_office"
    assert audit.detail["recipient"] == "phong.gd@bd.example"
    assert audit.detail["message_id"] == message_id_for(req)
    assert audit.detail["step"] == 0 and audit.detail["attempts"] == 1

    # Nothing about the child or the reporter outside the e-mail itself.
    assert req.contact is not None and req.contact.phone is not None
    for blob in (str(audit.detail), caplog.text, "\n".join(lines)):
        assert DESCRIPTION not in blob
        assert req.contact.phone not in blob
    assert lines == [
        f"notified district_office phong.gd@bd.example about {req.incident_id} (critical)"
    ]
    assert "incident=" + req.incident_id in caplog.text
    assert (
        registry.get_sample_value(
            "escalate_notifications_total",
            {"tier": "district_office", "severity": "critical", "status": "delivered"},
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "escalate_notification_send_seconds_count", {"tier": "district_office"}
        )
        == 1
    )
    assert len(smtp.handler.messages) == 1

    # A replay produces the same event id, so the audit trail keeps one row.
    again = notifier.deliver(record_for(req))
    assert again is not None
    replayed = AuditEvent.model_validate_json(by_topic(again)["t.audit.events.v1"][0])
    assert replayed.event_id == audit.event_id


def test_server_down_then_up_is_retried(smtp: Smtp) -> None:
    port = free_port()
    config = smtp.relay_on(port)
    late = Controller(smtp.handler, hostname="127.0.0.1", port=port)
    calls = 0

    async def send_then_start(msg: EmailMessage, s: SmtpConfig) -> None:
        nonlocal calls
        calls += 1
        try:
            await send(msg, s)
        finally:
            if calls == 1:
                late.start()  # the relay comes back while we back off

    notifier, registry = make_notifier(config, send_fn=send_then_start)
    try:
        out = notifier.deliver(record_for(make_request(tier=Tier.school)))
    finally:
        late.stop()
    assert out is not None
    result = DeliveryResult.model_validate_json(by_topic(out)["t.notifications.results.v1"][0])
    assert result.status is DeliveryStatus.delivered and result.attempts == 2
    assert len(smtp.handler.messages) == 1
    assert (
        registry.get_sample_value(
            "escalate_notification_attempts_total", {"tier": "school", "outcome": "transient"}
        )
        == 1
    )


def test_permanent_refusal_fails_at_once(smtp: Smtp) -> None:
    notifier, registry = make_notifier(smtp.config)
    req = make_request(email=REJECTED)
    out = notifier.deliver(record_for(req, offset=42))
    assert out is not None
    topics = by_topic(out)
    result = DeliveryResult.model_validate_json(topics["t.notifications.results.v1"][0])
    assert result.status is DeliveryStatus.failed and result.attempts == 1
    assert result.error is not None and "550" in result.error
    audit = AuditEvent.model_validate_json(topics["t.audit.events.v1"][0])
    assert audit.event is AuditEventType.notify_failed
    assert audit.detail["error_kind"] == "permanent"
    assert DESCRIPTION not in audit.model_dump_json()
    letter = DeadLetter.model_validate_json(topics["t.deadletter.v1"][0])
    assert letter.stage == "notifier" and letter.offset == 42 and letter.partition == 2
    assert "550" in letter.reason and letter.incident_id == req.incident_id
    assert (
        registry.get_sample_value(
            "escalate_notifications_total",
            {"tier": "district_office", "severity": "critical", "status": "failed"},
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "escalate_dead_letters_total", {"stage": "notifier", "reason": "undeliverable"}
        )
        == 1
    )
    # The incident is critical: the city intake desk hears of it, told only id and severity.
    assert_desk_told(smtp, req, topics["t.audit.events.v1"], registry)


def assert_desk_told(
    smtp: Smtp, req: NotificationRequest, audit_values: list[bytes], registry: CollectorRegistry
) -> None:
    [(rcpts, raw)] = smtp.handler.messages
    assert rcpts == [DESK]
    msg = parse(raw)
    assert msg["X-Escalate-Incident"] == req.incident_id
    assert msg["X-Escalate-Severity"] == "critical"
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert req.incident_id in text and "CRITICAL" in text
    for secret in (DESCRIPTION, req.school_name, "0987 654 321", "Trần Thị B", req.recipient.email):
        assert secret not in text and secret not in str(msg["Subject"])
    events = [AuditEvent.model_validate_json(v) for v in audit_values]
    fallback = [e for e in events if e.detail.get("fallback")]
    assert [(e.event, e.detail["recipient"]) for e in fallback] == [(AuditEventType.notified, DESK)]
    assert registry.get_sample_value("escalate_fallback_mails_total", {"outcome": "delivered"}) == 1


def test_a_failed_high_notification_does_not_mail_the_desk(smtp: Smtp) -> None:
    notifier, registry = make_notifier(smtp.config)
    req = make_request(email=REJECTED, severity=Severity.high, category=Category.cyberbullying)
    out = notifier.deliver(record_for(req))
    assert out is not None and "t.deadletter.v1" in by_topic(out)
    assert smtp.handler.messages == []
    assert registry.get_sample_value("escalate_fallback_mails_total", {"outcome": "delivered"}) == 0


def test_relay_unreachable_in_every_attempt_pauses_instead_of_giving_up(smtp: Smtp) -> None:
    notifier, registry = make_notifier(smtp.relay_on(free_port(), backoff_s=0.01))
    with pytest.raises(Unavailable, match="unreachable"):
        notifier.deliver(record_for(make_request()))
    # Nothing was given up: no dead letter counted, nothing for the desk.
    assert (
        registry.get_sample_value(
            "escalate_dead_letters_total", {"stage": "notifier", "reason": "undeliverable"}
        )
        == 0
    )


def test_a_request_that_makes_handling_raise_still_reaches_the_desk(smtp: Smtp) -> None:
    notifier, registry = make_notifier(smtp.config)
    req = make_request()
    out = notifier.on_poison(record_for(req), OverflowError("date value out of range"))
    assert_desk_told(smtp, req, by_topic(out)["t.audit.events.v1"], registry)


def test_an_unparseable_request_that_says_critical_reaches_the_desk(smtp: Smtp) -> None:
    notifier, registry = make_notifier(smtp.config)
    req = make_request()
    broken = json.loads(req.model_dump_json())
    broken["step"] = -1  # breaks the contract, but still says which incident and how bad
    out = notifier.deliver(
        FakeRecord("t.notifications.requested.v1", 0, 9, b"k", json.dumps(broken).encode())
    )
    assert out is not None
    topics = by_topic(out)
    letter = DeadLetter.model_validate_json(topics["t.deadletter.v1"][0])
    assert letter.incident_id == req.incident_id and letter.reason.startswith("unparseable")
    assert_desk_told(smtp, req, topics["t.audit.events.v1"], registry)


def test_transient_failures_exhaust_attempts(smtp: Smtp) -> None:
    notifier, _ = make_notifier(smtp.config)
    out = notifier.deliver(record_for(make_request(email=GREYLISTED)))
    assert out is not None
    result = DeliveryResult.model_validate_json(by_topic(out)["t.notifications.results.v1"][0])
    assert result.status is DeliveryStatus.failed
    assert result.attempts == smtp.config.retry.max_attempts
    assert "t.deadletter.v1" in by_topic(out)


def test_stop_during_backoff_leaves_the_request_uncommitted(smtp: Smtp) -> None:
    notifier, _ = make_notifier(smtp.relay_on(free_port(), backoff_s=30))
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    try:
        assert notifier.deliver(record_for(make_request()), stop) is None
    finally:
        timer.cancel()


def test_unparseable_request_is_dead_lettered(smtp: Smtp) -> None:
    notifier, _ = make_notifier(smtp.config)
    bad = FakeRecord("t.notifications.requested.v1", 0, 3, b"k", b'{"incident_id": 1}')
    out = notifier.deliver(bad)
    assert out is not None and [o.topic for o in out] == ["t.deadletter.v1"]
    letter = DeadLetter.model_validate_json(out[0].value)
    assert letter.payload == '{"incident_id": 1}' and "incident_id" in letter.reason


# ---- the local capture server ----


def test_outbox_saves_messages_and_announces_them(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", smtp_timeout_s=5)
    lines: list[str] = []
    req = make_request(tier=Tier.school, email="hieutruong@thcs.example", contact=None)
    with OutboxServer(settings, on_mail=lambda line: lines.append(line)) as outbox:
        assert outbox.port > 0
        relay = SmtpConfig(host="127.0.0.1", port=outbox.port, timeout_s=5)
        asyncio.run(send(render_email(req, "escalate@so.example"), relay))
        [saved] = outbox.saved
    assert saved.parent == settings.outbox_dir
    assert saved.name.endswith(message_id_for(req).strip("<>").replace("@", "_") + ".eml")
    msg = parse(saved.read_bytes())
    assert msg["X-Escalate-Incident"] == req.incident_id
    [line] = lines
    assert "hieutruong@thcs.example" in line and "[ESCALATE][CRITICAL]" in line
    assert DESCRIPTION not in line


# ---- many requests at once, over reused connections ----


class Sink(Capture):
    """Capture that also counts connections and simultaneous DATA sessions, and can drop the
    connection instead of answering the n-th DATA (the message is then not taken)."""

    def __init__(self, data_s: float = 0.02, drop_at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.data_s = data_s
        self.drop_at = set(drop_at)
        self.peers: set[Any] = set()
        self.in_data = 0
        self.most_in_data = 0
        self.data_seen = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.peers.add(session.peer)
        self.data_seen += 1
        if self.data_seen in self.drop_at:
            server.transport.close()
            return "421 closing"
        self.in_data += 1
        self.most_in_data = max(self.most_in_data, self.in_data)
        try:
            await asyncio.sleep(self.data_s)
        finally:
            self.in_data -= 1
        return await super().handle_DATA(server, session, envelope)


def many_requests(n: int) -> list[NotificationRequest]:
    out = []
    for i in range(n):
        email = f"r{i}@bd.example"
        out.append(
            make_request(
                incident_id=f"inc-{i}",
                email=email,
                notification_id=notification_id(f"inc-{i}", email, 0),
                severity=Severity.high,
                category=Category.cyberbullying,
            )
        )
    return out


@pytest.fixture
def sink_for(smtp: Smtp) -> Iterator[Any]:
    started: list[Controller] = []

    def start(handler: Sink) -> NotifierConfig:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        started.append(controller)
        return replace(smtp.relay_on(port), concurrency=8)

    yield start
    for controller in started:
        controller.stop()


def run_batch(notifier: Notifier, reqs: list[NotificationRequest]) -> list[int]:
    committed: list[int] = []
    batch = [record_for(r, offset=i) for i, r in enumerate(reqs)]
    for handled in notifier.handle(batch, threading.Event()):
        committed += [r.offset for r in handled.records]
    return committed


def message_ids(sink: Capture) -> list[str]:
    return [str(parse(raw)["Message-ID"]) for _, raw in sink.messages]


def test_a_batch_goes_out_concurrently_over_few_connections(sink_for: Any) -> None:
    sink = Sink()
    notifier, registry = make_notifier(sink_for(sink))
    reqs = many_requests(40)
    try:
        assert run_batch(notifier, reqs) == list(range(40))
    finally:
        notifier.close()
    assert sorted(message_ids(sink)) == sorted(message_id_for(r) for r in reqs)
    assert 1 < sink.most_in_data <= 8
    assert len(sink.peers) <= 8  # one connection per slot, each reused for several mails
    assert (
        registry.get_sample_value(
            "escalate_notification_send_seconds_count", {"tier": "district_office"}
        )
        == 40
    )


def test_a_dropped_connection_is_replaced_and_each_mail_goes_once(sink_for: Any) -> None:
    sink = Sink(drop_at=(5, 12))
    notifier, registry = make_notifier(sink_for(sink))
    reqs = many_requests(20)
    try:
        assert run_batch(notifier, reqs) == list(range(20))
    finally:
        notifier.close()
    ids = message_ids(sink)
    assert sorted(ids) == sorted(message_id_for(r) for r in reqs)  # each exactly once
    assert len(sink.peers) > 1
    assert (
        registry.get_sample_value(
            "escalate_notification_attempts_total",
            {"tier": "district_office", "outcome": "transient"},
        )
        == 2
    )
