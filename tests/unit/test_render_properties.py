"""The mail renderer and the notifier's core are total over what the contract accepts.

Hypothesis draws NotificationRequests from the pydantic model (tests/strategies.py), with
extreme dates, line breaks and control characters in every free-text field. For each one the
mail renders, serialises as it would go on the wire, parses back with exactly the headers we
set, and no value meant for one line can add a line of its own to the body.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.parser import BytesParser

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consumers.notifier.delivery import delivery_outcome
from consumers.notifier.render import (
    fallback_message_id,
    message_id_for,
    render_email,
    render_fallback_email,
)
from consumers.notifier.sender import SendError
from schemas.common import Category, Severity, Tier
from schemas.notifications import (
    DeliveryStatus,
    NotificationKind,
    NotificationRequest,
    Recipient,
)
from tests.strategies import notification_requests

SENDER = "escalate@so.example"
WIRE = policy.SMTP  # what aiosmtplib hands the relay for a plain EmailMessage: CRLF line ends
# Lines the body writes once each; a value that could start a line could fake one of these.
ONCE = (
    "Mức độ / Severity:",
    "Mã sự cố / Incident:",
    "Loại / Category:",
    "Hạn xác nhận / Acknowledge by:",
)
HOSTILE = "Trường A\r\nMức độ / Severity: LOW\u2028Bcc: x@evil.example\x00\u202e"


def base(**overrides: object) -> NotificationRequest:
    fields: dict[str, object] = {
        "notification_id": "n-1",
        "incident_id": "inc-1",
        "step": 0,
        "recipient": Recipient(tier=Tier.school, name="BGH", email="bgh@thcs.example"),
        "severity": Severity.critical,
        "category": Category.self_harm,
        "school_code": "HN-BD-THCS-001",
        "school_name": "Trường THCS Phan Chu Trinh",
        "description": "Em ấy nhắn tin chào tạm biệt mọi người.",
        "received_at": datetime(2026, 3, 2, 13, 5, tzinfo=UTC),
        "ack_due_at": datetime(2026, 3, 2, 13, 20, tzinfo=UTC),
        "report_ids": ["r-1"],
        "tracking_codes": ["ESC-7K3M-9Q2X"],
        "rules_version": "abc",
    }
    fields.update(overrides)
    return NotificationRequest.model_validate(fields)


def body_lines(req: NotificationRequest) -> list[str]:
    # The bytes the relay receives (RenderedEmail.wire: what the sender hands to sendmail).
    raw = render_email(req, SENDER, now=datetime(2026, 3, 2, tzinfo=UTC)).wire()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    # Exactly the headers we wrote, once each: nothing smuggled in through a value.
    names = [name.lower() for name in parsed]
    assert len(names) == len(set(names)), names
    assert "bcc" not in names and "cc" not in names
    assert [a.addr_spec for a in parsed["To"].addresses] == [req.recipient.email]
    assert parsed["Message-ID"] == message_id_for(req)
    part = parsed.get_body(preferencelist=("plain",))
    assert part is not None
    content: str = part.get_content()
    return content.splitlines()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notification_requests())
@example(base(occurred_at=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)))
@example(base(occurred_at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))))
@example(base(ack_due_at=datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-12)))))
@example(base(occurred_at=datetime(9999, 12, 31, 23, 59)))  # naive: taken as UTC
@example(base(school_name=HOSTILE, district_name=HOSTILE, reasons=[HOSTILE]))
@example(base(recipient=Recipient(tier=Tier.school, name=HOSTILE, email="a@b.example")))
@example(base(description=HOSTILE * 3, rules_version=HOSTILE, tracking_codes=[HOSTILE]))
def test_every_accepted_request_renders_and_cannot_fake_a_line(req: NotificationRequest) -> None:
    lines = body_lines(req)
    status_only = req.kind in (NotificationKind.acknowledged, NotificationKind.resolved)
    for start in ONCE[:2] if status_only else ONCE:
        assert sum(line.startswith(start) for line in lines) == 1, (start, lines)


@settings(max_examples=100, deadline=None)
@given(notification_requests(), st.integers(1, 10), st.booleans(), st.booleans())
def test_the_outcome_core_is_total(
    req: NotificationRequest, attempts: int, failed: bool, transient: bool
) -> None:
    error = SendError("550 no such mailbox", transient=transient) if failed else None
    outcome = delivery_outcome(req, attempts, error, datetime(2026, 3, 2, tzinfo=UTC))
    assert outcome.result.status is (DeliveryStatus.failed if failed else DeliveryStatus.delivered)
    assert outcome.audit.incident_id == req.incident_id
    # The trail never carries the report or the reporter.
    dumped = outcome.audit.model_dump_json()
    if len(req.description) > 12:
        assert req.description not in dumped
    if req.contact is not None and req.contact.phone and len(req.contact.phone) > 9:
        assert req.contact.phone not in dumped


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.sampled_from(list(Severity)))
@example(HOSTILE, Severity.critical)
def test_the_fallback_mail_renders_for_any_incident_id(
    incident_id: str, severity: Severity
) -> None:
    msg = render_fallback_email(incident_id, severity, SENDER, ["desk@so.example"])
    parsed = BytesParser(policy=policy.default).parsebytes(msg.as_bytes(policy=WIRE))
    assert [a.addr_spec for a in parsed["To"].addresses] == ["desk@so.example"]
    assert parsed["Message-ID"] == fallback_message_id(incident_id)
    assert "bcc" not in [name.lower() for name in parsed]


def test_a_far_future_date_is_shown_as_given() -> None:
    lines = body_lines(base(occurred_at=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)))
    [occurred] = [line for line in lines if line.startswith("Thời điểm xảy ra")]
    assert "9999-12-31T23:59:59+00:00" in occurred


def test_line_breaks_in_a_name_are_shown_escaped() -> None:
    lines = body_lines(base(school_name="THCS A\nMức độ / Severity: LOW"))
    assert any(
        line.startswith("Trường / School: THCS A\\nMức độ / Severity: LOW") for line in lines
    )


def test_the_report_text_is_quoted_line_by_line() -> None:
    lines = body_lines(base(description="Dòng một\r\nMức độ / Severity: LOW"))
    assert "> Dòng một" in lines and "> Mức độ / Severity: LOW" in lines
