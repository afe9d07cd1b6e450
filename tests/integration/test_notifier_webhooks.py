"""Webhook deliveries beside the mail (issue 12): signed per Standard Webhooks and verified by
a receiver on a real port, retried like the mail with the same webhook-id (the receiver
handles the event once), recorded in results and audit, and dead-lettered when refused,
without holding up the mail."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from consumers.notifier.webhooks import webhook_id
from schemas.audit import AuditEvent, AuditEventType, DeadLetter
from schemas.directory import WebhookTarget
from schemas.notifications import DeliveryResult, DeliveryStatus, Recipient
from schemas.webhooks import WebhookEvent
from tests.integration.test_notifier_smtp import (
    DESCRIPTION,
    Smtp,
    by_topic,
    make_notifier,
    make_request,
    record_for,
    smtp,  # noqa: F401 (the fixture)
)
from tests.services.chat_apis import TOKEN, fake_chat_apis
from tests.services.webhook_receiver import SECRET, Receiver, webhook_receiver

RESULTS, AUDIT, DEAD = "t.notifications.results.v1", "t.audit.events.v1", "t.deadletter.v1"


@pytest.fixture
def receiver() -> Receiver:
    with webhook_receiver() as running:
        yield running


def hooked(receiver: Receiver, secret_env: str = "BD_OFFICE_HOOK") -> Recipient:
    return Recipient(
        tier="district_office",
        name="Phòng GDĐT Ba Đình",
        email="phong.gd@bd.example",
        webhooks=[WebhookTarget(url=receiver.url, secret_env=secret_env)],
    )


def test_a_notice_reaches_the_mail_and_the_webhook_once_despite_a_retry(
    smtp: Smtp,  # noqa: F811
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.fail_first = True  # the system is busy the first time
    config = replace(smtp.config, webhook_secrets={"BD_OFFICE_HOOK": SECRET})
    notifier, registry = make_notifier(config)
    req = make_request(recipient=hooked(receiver))
    with caplog.at_level(logging.INFO, logger="escalate"):
        out = notifier.deliver(record_for(req))
    assert out is not None
    assert len(smtp.handler.messages) == 1  # the mail, as before

    msg_id = webhook_id(req, req.recipient.webhooks[0])
    assert receiver.calls == [(msg_id, True), (msg_id, True)]  # signed, same id on the retry
    (event,) = receiver.events.values()
    parsed = WebhookEvent.model_validate(event)
    assert parsed.type == "incident.first_notice"
    assert (parsed.data.incident_id, parsed.data.severity, parsed.data.description) == (
        req.incident_id,
        req.severity,
        DESCRIPTION,
    )
    assert parsed.data.contact == req.contact  # redacted for the tier like its mail

    topics = by_topic(out)
    results = [DeliveryResult.model_validate_json(v) for v in topics[RESULTS]]
    assert [(r.channel, r.status, r.attempts) for r in results] == [
        ("email", DeliveryStatus.delivered, 1),
        ("webhook", DeliveryStatus.delivered, 2),
    ]
    assert results[1].target == receiver.url and results[1].message_id == msg_id
    audits = [AuditEvent.model_validate_json(v) for v in topics[AUDIT]]
    assert [a.detail.get("channel", "email") for a in audits] == ["email", "webhook"]
    assert audits[1].event is AuditEventType.notified
    assert DESCRIPTION not in str(audits[1].detail) and DESCRIPTION not in caplog.text
    delivered = registry.get_sample_value(
        "escalate_channel_deliveries_total",
        {"channel": "webhook", "tier": "district_office", "status": "delivered"},
    )
    assert delivered == 1


def test_a_refused_webhook_is_dead_lettered_and_the_mail_still_goes(
    smtp: Smtp,  # noqa: F811
    receiver: Receiver,
) -> None:
    receiver.status = 410  # the system says it will never take it
    notifier, _ = make_notifier(replace(smtp.config, webhook_secrets={"BD_OFFICE_HOOK": SECRET}))
    req = make_request(recipient=hooked(receiver))
    out = notifier.deliver(record_for(req))
    assert out is not None
    assert len(smtp.handler.messages) == 1
    assert len(receiver.calls) == 1  # permanent: not retried
    topics = by_topic(out)
    (letter,) = [DeadLetter.model_validate_json(v) for v in topics[DEAD]]
    assert "webhook to 127.0.0.1 failed: webhook answered 410" in letter.reason
    failed = [AuditEvent.model_validate_json(v) for v in topics[AUDIT]][-1]
    assert failed.event is AuditEventType.notify_failed
    assert failed.detail["channel"] == "webhook"


def test_a_webhook_whose_secret_is_not_configured_fails_without_a_call(
    smtp: Smtp,  # noqa: F811
    receiver: Receiver,
) -> None:
    notifier, _ = make_notifier(smtp.config)  # no secrets given to this notifier
    out = notifier.deliver(record_for(make_request(recipient=hooked(receiver, "UNSET_HOOK"))))
    assert out is not None
    assert receiver.calls == []
    (letter,) = [DeadLetter.model_validate_json(v) for v in by_topic(out)[DEAD]]
    assert "no secret UNSET_HOOK" in letter.reason


def test_a_forged_signature_is_refused_by_the_receiver(
    smtp: Smtp,  # noqa: F811
    receiver: Receiver,
) -> None:
    """The receiver really checks: a notifier with another secret is not believed."""
    other = "whsec_" + "b" * 44
    notifier, _ = make_notifier(replace(smtp.config, webhook_secrets={"BD_OFFICE_HOOK": other}))
    out = notifier.deliver(record_for(make_request(recipient=hooked(receiver))))
    assert out is not None
    assert receiver.calls and not any(verified for _, verified in receiver.calls)
    assert receiver.events == {}


# ---- alerts to duty officers' Telegram chats ---------------------------------------------------


DUTY_CHAT = -1001234567890  # a group, as duty rooms usually are


def test_a_duty_chat_gets_a_short_alert_without_the_report_text(
    smtp: Smtp,  # noqa: F811
) -> None:
    with fake_chat_apis() as apis:
        config = replace(smtp.config, telegram_token=TOKEN, telegram_api_base=apis.base)
        notifier, registry = make_notifier(config)
        recipient = Recipient(
            tier="police",
            name="Công an quận Ba Đình",
            email="truc-ban@ca.bd.example",
            telegram_chat_ids=[DUTY_CHAT],
        )
        req = make_request(recipient=recipient, immediate_danger=True)
        out = notifier.deliver(record_for(req))
        (alert,) = apis.texts(DUTY_CHAT)
    assert out is not None and len(smtp.handler.messages) == 1
    assert alert.startswith("[KHẨN CẤP] Sự việc mới: sexual_exploitation")
    assert "Trường THCS Nguyễn Trãi (Ba Đình)" in alert
    assert "nguy hiểm ngay lúc này" in alert and "ESC-7K3M-9Q2X" in alert
    assert "20:20 02/03/2026" in alert  # the deadline in Hanoi time
    assert req.contact is not None and req.contact.phone is not None
    assert DESCRIPTION not in alert and req.contact.phone not in alert
    results = [DeliveryResult.model_validate_json(v) for v in by_topic(out)[RESULTS]]
    assert [(r.channel, r.target, r.status) for r in results] == [
        ("email", None, DeliveryStatus.delivered),
        ("telegram", str(DUTY_CHAT), DeliveryStatus.delivered),
    ]
    assert (
        registry.get_sample_value(
            "escalate_channel_deliveries_total",
            {"channel": "telegram", "tier": "police", "status": "delivered"},
        )
        == 1
    )


def test_a_chat_that_blocked_the_bot_is_dead_lettered_and_the_mail_still_goes(
    smtp: Smtp,  # noqa: F811
) -> None:
    with fake_chat_apis() as apis:
        apis.blocked.add(DUTY_CHAT)
        config = replace(smtp.config, telegram_token=TOKEN, telegram_api_base=apis.base)
        notifier, _ = make_notifier(config)
        recipient = Recipient(
            tier="police", name="CA", email="truc-ban@ca.bd.example", telegram_chat_ids=[DUTY_CHAT]
        )
        out = notifier.deliver(record_for(make_request(recipient=recipient)))
    assert out is not None and len(smtp.handler.messages) == 1
    (letter,) = [DeadLetter.model_validate_json(v) for v in by_topic(out)[DEAD]]
    assert f"telegram to chat {DUTY_CHAT} failed: Telegram answered 403" in letter.reason
