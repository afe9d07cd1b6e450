"""The rendered e-mail: stable ids, every fact a recipient needs, contact only when allowed."""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from typing import Any

from consumers.notifier.render import message_id_for, render_email
from schemas.common import Category, Severity, Tier
from schemas.ids import notification_id
from schemas.notifications import NotificationRequest, Recipient
from schemas.reports import ReporterContact

SENDER = "escalate@so-gddt.example"
DESCRIPTION = "Em thấy bạn cùng lớp nhắn tin tạm biệt và nói muốn tự làm hại bản thân tối nay."


def make_request(**overrides: Any) -> NotificationRequest:
    tier = overrides.pop("tier", Tier.district_office)
    email = overrides.pop("email", "phong.gd@bd.example")
    step = overrides.get("step", 0)
    fields: dict[str, Any] = {
        "notification_id": notification_id("inc-r-0001", email, step),
        "incident_id": "inc-r-0001-aaaa-bbbb-cccc",
        "step": 0,
        "recipient": Recipient(tier=tier, name="Phòng GDĐT Ba Đình", email=email),
        "severity": Severity.critical,
        "category": Category.self_harm,
        "school_code": "THCS-BD-01",
        "school_name": "Trường THCS Nguyễn Trãi",
        "district_name": "Ba Đình",
        "description": DESCRIPTION,
        "occurred_at": datetime(2026, 3, 2, 13, 0, tzinfo=UTC),
        "received_at": datetime(2026, 3, 2, 13, 5, tzinfo=UTC),
        "ack_due_at": datetime(2026, 3, 2, 13, 20, tzinfo=UTC),
        "report_ids": ["r-0001", "r-0002"],
        "tracking_codes": ["ESC-7K3M-9Q2X", "ESC-ABCD-EFGH"],
        "reasons": ["keyword: tự làm hại", "goodbye message"],
        "needs_review": False,
        "rules_version": "abc123def456",
        "evidence_urls": ["https://example.org/screenshot/1"],
        "contact": ReporterContact(name="Nguyễn Văn A", phone="0912 345 678", email="a@x.example"),
    }
    fields.update(overrides)
    return NotificationRequest(**fields)


def body_of(req: NotificationRequest) -> str:
    content = render_email(req, SENDER).get_content()
    assert isinstance(content, str)
    return content


def test_message_id_is_deterministic_per_incident_recipient_and_step() -> None:
    req = make_request()
    again = make_request(email="PHONG.GD@BD.EXAMPLE")
    later = make_request(step=1)
    assert message_id_for(req) == message_id_for(req.model_copy())
    assert message_id_for(req) == message_id_for(again)  # addresses compare case-insensitively
    assert message_id_for(req) != message_id_for(later)
    assert message_id_for(req).startswith("<") and message_id_for(req).endswith("@escalate.local>")
    assert render_email(req, SENDER)["Message-ID"] == message_id_for(req)


def test_subject_names_severity_category_school_and_incident() -> None:
    subject = str(render_email(make_request(), SENDER)["Subject"])
    assert subject.startswith("[ESCALATE][CRITICAL] self_harm — Trường THCS Nguyễn Trãi — ")
    assert subject.endswith(" — inc-r-0001-aaaa")
    escalation = str(render_email(make_request(step=2), SENDER)["Subject"])
    assert "[STEP 2]" in escalation


def test_headers() -> None:
    msg = render_email(make_request(step=1), SENDER)
    assert msg["X-Escalate-Incident"] == "inc-r-0001-aaaa-bbbb-cccc"
    assert msg["X-Escalate-Step"] == "1"
    assert msg["From"] == SENDER
    assert "phong.gd@bd.example" in str(msg["To"])
    assert msg["Auto-Submitted"] == "auto-generated"


def test_body_carries_everything_needed_to_act() -> None:
    body = body_of(make_request())
    for expected in (
        "inc-r-0001-aaaa-bbbb-cccc",
        "CRITICAL",
        "self_harm",
        "Trường THCS Nguyễn Trãi",
        "THCS-BD-01",
        "Ba Đình",
        DESCRIPTION,
        "r-0001",
        "ESC-7K3M-9Q2X",
        "r-0002",
        "ESC-ABCD-EFGH",
        "goodbye message",
        "abc123def456",
        "https://example.org/screenshot/1",
        "2026-03-02 20:05",  # received, shown in Hanoi time
        "2026-03-02 20:20",  # acknowledgement due
    ):
        assert expected in body, expected
    assert "Needs human review" not in body
    assert "Unknown school" not in body


def test_flags_for_review_and_unknown_school() -> None:
    body = body_of(make_request(needs_review=True, unknown_school=True, district_name=None))
    assert "Needs human review" in body
    assert "unknown school — routed to the city intake desk".lower() in body.lower()


def test_contact_only_when_present() -> None:
    with_contact = body_of(make_request())
    assert "Nguyễn Văn A" in with_contact and "0912 345 678" in with_contact
    school = body_of(make_request(tier=Tier.school, email="hieutruong@thcs.example", contact=None))
    assert "Nguyễn Văn A" not in school
    assert "0912" not in school
    assert "a@x.example" not in school
    # Even if routing slipped and left the contact in, a school never sees it.
    slipped = body_of(make_request(tier=Tier.school, email="hieutruong@thcs.example"))
    assert "Nguyễn Văn A" not in slipped and "0912" not in slipped


def test_header_values_cannot_be_split() -> None:
    msg = render_email(make_request(school_name="Trường A\r\nBcc: evil@example.org"), SENDER)
    raw = msg.as_bytes()
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert parsed["Bcc"] is None
    assert "Trường A Bcc: evil@example.org" in str(parsed["Subject"])


def test_utf8_round_trip() -> None:
    req = make_request()
    parsed = BytesParser(policy=policy.default).parsebytes(render_email(req, SENDER).as_bytes())
    assert str(parsed["Subject"]).startswith("[ESCALATE][CRITICAL] self_harm — Trường")
    part = parsed.get_body(preferencelist=("plain",))
    assert part is not None
    assert DESCRIPTION in part.get_content()


def test_fixed_date_when_given() -> None:
    msg = render_email(make_request(), SENDER, now=datetime(2026, 3, 2, 13, 6, tzinfo=UTC))
    assert msg["Date"] == "Mon, 02 Mar 2026 13:06:00 +0000"
    assert render_email(make_request(), SENDER)["Date"] is None


def test_vietnamese_subjects_survive_the_wire_intact() -> None:
    # CPython's header folding used to eat the space in "THPT Yên Hòa" on the wire.
    for school in ("Trường THPT Yên Hòa", "Trường Trung học phổ thông Chuyên Hà Nội - Amsterdam"):
        for category in Category:
            req = make_request(school_name=school, category=category, severity=Severity.high)
            msg = render_email(req, "escalate@localhost")
            parsed = BytesParser(policy=policy.default).parsebytes(msg.as_bytes())
            assert parsed["Subject"] == msg["Subject"]
            assert school in parsed["Subject"]
