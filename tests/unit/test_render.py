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
    parsed = BytesParser(policy=policy.default).parsebytes(msg.wire())
    assert parsed["Bcc"] is None
    assert "Trường A Bcc: evil@example.org" in str(parsed["Subject"])


def test_names_with_line_breaks_cannot_add_a_header() -> None:
    hostile = "Ban giám hiệu\r\nBcc: evil@example.org\nX-Injected: 1"
    req = make_request(
        recipient=Recipient(tier=Tier.school, name=hostile, email="bgh@thcs.example"),
        incident_id="inc-1\r\nCc: evil@example.org",
        notification_id="n-1\nX-Injected: 2",
    )
    wire = render_email(req, SENDER).wire()
    parsed = BytesParser(policy=policy.default).parsebytes(wire)
    names = [name.lower() for name in parsed]
    assert "bcc" not in names and "cc" not in names and "x-injected" not in names
    assert len(names) == len(set(names))
    assert [a.addr_spec for a in parsed["To"].addresses] == ["bgh@thcs.example"]
    assert parsed["X-Escalate-Incident"] == "inc-1 Cc: evil@example.org"
    head = wire.split(b"\r\n\r\n", 1)[0]
    # Every line break on the wire is CRLF, and every line but a field's first is a continuation.
    assert b"\n" not in head.replace(b"\r\n", b"") and b"\r" not in head.replace(b"\r\n", b"")
    for line in head.split(b"\r\n"):
        assert line[:1] in (b" ", b"\t") or line.split(b":", 1)[0].lower().decode() in names


def test_utf8_round_trip() -> None:
    req = make_request()
    parsed = BytesParser(policy=policy.default).parsebytes(render_email(req, SENDER).wire())
    assert str(parsed["Subject"]).startswith("[ESCALATE][CRITICAL] self_harm — Trường")
    part = parsed.get_body(preferencelist=("plain",))
    assert part is not None
    assert DESCRIPTION in part.get_content()


def test_fixed_date_when_given() -> None:
    msg = render_email(make_request(), SENDER, now=datetime(2026, 3, 2, 13, 6, tzinfo=UTC))
    assert msg["Date"] == "Mon, 02 Mar 2026 13:06:00 +0000"
    assert b"\r\nDate: Mon, 02 Mar 2026 13:06:00 +0000\r\n" in msg.wire()
    msg.stamp("Tue, 03 Mar 2026 00:00:00 +0000")  # a given date is kept
    assert msg.wire().count(b"\r\nDate: ") == 1
    assert render_email(make_request(), SENDER)["Date"] is None


def test_the_date_is_stamped_once_and_kept_for_retries() -> None:
    msg = render_email(make_request(), SENDER)
    assert b"\r\nDate:" not in msg.wire()
    msg.stamp("Mon, 02 Mar 2026 13:06:00 +0000")
    msg.stamp("Mon, 02 Mar 2026 13:07:00 +0000")  # a retry
    parsed = BytesParser(policy=policy.default).parsebytes(msg.wire())
    assert parsed["Date"] == "Mon, 02 Mar 2026 13:06:00 +0000"
    assert msg["Date"] == "Mon, 02 Mar 2026 13:06:00 +0000"
    # Last, after MIME-Version, where setting it on the EmailMessage used to put it.
    assert list(parsed.keys())[-2:] == ["MIME-Version", "Date"]


def test_the_envelope_is_the_recipient() -> None:
    msg = render_email(make_request(email="PGD@BaDinh.Hanoi.example"), "Escalate <esc@so.example>")
    assert msg.fits_wire
    assert msg.sender == "esc@so.example"
    assert msg.recipients == ["PGD@BaDinh.Hanoi.example"]


def test_vietnamese_subjects_survive_the_wire_intact() -> None:
    # CPython's header folding ate the space in "THPT Yên Hòa" on the wire (aiosmtplib folds
    # at 78 columns): the wire form is checked here, as the relay receives it.
    for school in ("Trường THPT Yên Hòa", "Trường Trung học phổ thông Chuyên Hà Nội - Amsterdam"):
        for category in Category:
            for step in (0, 3):
                req = make_request(
                    school_name=school, category=category, severity=Severity.high, step=step
                )
                msg = render_email(req, "escalate@localhost")
                parsed = BytesParser(policy=policy.default).parsebytes(msg.wire())
                assert parsed["Subject"] == msg["Subject"]
                assert school in parsed["Subject"]


def test_vietnamese_names_survive_the_wire_intact() -> None:
    for name in (
        "Phòng GDĐT Ba Đình",
        "PA05 Công an TP Hà Nội",
        "Trường Tiểu học Tràng An",
        "Công an quận Thanh Xuân",
        "Sở GDĐT Hà Nội (intake desk)",
        "Phòng Giáo dục và Đào tạo quận Nam Từ Liêm",
        "Công an TP. Hà Nội",
        "Nguyễn Văn A",
    ):
        req = make_request(recipient=Recipient(tier=Tier.school, name=name, email="bgh@x.example"))
        msg = render_email(req, SENDER)
        parsed = BytesParser(policy=policy.default).parsebytes(msg.wire())
        [address] = parsed["To"].addresses
        assert address.addr_spec == "bgh@x.example"
        assert address.display_name == msg["To"].addresses[0].display_name, name
        assert all(len(line) <= 78 for line in msg.wire().split(b"\r\n\r\n")[0].split(b"\r\n"))
