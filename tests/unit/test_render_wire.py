"""The mail rendered to bytes is the mail the notifier used to send.

``render_email`` used to return an EmailMessage that aiosmtplib's ``send_message`` flattened
(email.policy.SMTP: headers folded at 78 columns) for every attempt; it now renders the bytes
once (RenderedEmail) and the sender hands them to ``sendmail``. ``legacy_message`` below is the
old ``render_email``, kept verbatim as the reference. For a large sample of requests (the
hypothesis strategy of the contract, and a corpus of the directory's names and every kind) the
two are parsed with the default policy and must agree:

- the same header fields in the same order, each either byte for byte the old field, or
  decoding to exactly the value the old code set (the old fold lost a space before an encoded
  word at the start of a continuation line: such fields decoded wrong before and right now);
- the same body bytes, Content-Type and Content-Transfer-Encoding;
- the same envelope (sender, recipients, MAIL options) as send_message computed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import yaml
from aiosmtplib.email import extract_recipients, extract_sender, flatten_message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consumers.notifier import render
from consumers.notifier.render import (
    MAIL_POLICY,
    RenderedEmail,
    email_message,
    message_id_for,
    render_body,
    render_email,
    render_subject,
)
from consumers.notifier.sender import _transmit
from schemas.common import Category, Severity, Tier
from schemas.notifications import NotificationKind, NotificationRequest, Recipient
from tests.strategies import notification_requests, text
from tests.unit.test_render import make_request

SENDER = "escalate@so.example"
DATE = "Mon, 02 Mar 2026 13:06:00 +0000"
LINK = "https://escalate.example/a/eyJhbGciOi.abc"
HOSTILE = "Trường A\r\nMức độ / Severity: LOW\u2028Bcc: x@evil.example\x00\u202e"
DIRECTORY = Path(__file__).resolve().parents[2] / "escalate" / "defaults" / "directory.yaml"


def legacy_message(
    req: NotificationRequest,
    sender: str,
    *,
    now: datetime | None = None,
    action_url: str | None = None,
) -> EmailMessage:
    """``render_email`` as it was before it rendered to bytes (the reference)."""
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["From"] = sender
    msg["To"] = render._address(req.recipient.name, req.recipient.email)
    msg["Subject"] = render_subject(req)
    msg["Message-ID"] = message_id_for(req)
    if now is not None:
        msg["Date"] = format_datetime(now if now.tzinfo else now.replace(tzinfo=UTC))
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Escalate-Incident"] = render._one_line(req.incident_id)
    msg["X-Escalate-Step"] = str(req.step)
    msg["X-Escalate-Severity"] = req.severity.value
    msg["X-Escalate-Notification-Id"] = render._one_line(req.notification_id)
    if req.severity is Severity.critical or req.immediate_danger:
        msg["Importance"] = "high"
        msg["X-Priority"] = "1"
    msg["X-Escalate-Kind"] = req.kind.value
    msg.set_content(render_body(req, action_url), charset="utf-8")
    return msg


def legacy_wire(msg: EmailMessage) -> bytes:
    """What the old sender put on the wire: Date set if missing, then send_message's flattening
    for a relay that offers 8BITMIME, with an ASCII envelope."""
    if "Date" not in msg:
        msg["Date"] = DATE
    return flatten_message(msg, utf8=False, cte_type="8bit")


def fields(raw: bytes) -> list[bytes]:
    """The header fields of a message, each with its folded continuation lines."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return re.split(rb"\r\n(?![ \t])", head)


def addresses(header: Any) -> list[tuple[str, str]]:
    return [(a.display_name, a.addr_spec) for a in header.addresses]


def assert_same_mail(old: bytes, new: bytes, reference: EmailMessage) -> int:
    """Fail unless ``new`` reads as ``old`` (see the module's docstring); return how many
    fields differ in bytes (for the report of the sample)."""
    assert b"\r\n\r\n" in new
    assert all(len(line) <= 998 for line in new.split(b"\r\n")), "a line over RFC 5322's limit"
    assert b"\n" not in new.replace(b"\r\n", b""), "a bare LF"
    assert b"\r" not in new.replace(b"\r\n", b""), "a bare CR"
    old_fields, new_fields = fields(old), fields(new)
    names = [f.split(b":", 1)[0].decode("ascii") for f in old_fields]
    assert [f.split(b":", 1)[0].decode("ascii") for f in new_fields] == names
    assert names == list(reference.keys())
    parsed = message_from_bytes(new, policy=policy.default)
    assert list(parsed.keys()) == names, "a value added or hid a header"
    differing = 0
    for name, was, now in zip(names, old_fields, new_fields, strict=True):
        if was == now:
            continue
        differing += 1
        # Not the old bytes: then it must decode to exactly the value the old code set.
        assert str(parsed[name]) == str(reference[name]), (name, was, now)
        if name in ("To", "From"):
            assert addresses(parsed[name]) == addresses(reference[name]), (name, was, now)
    assert new.split(b"\r\n\r\n", 1)[1] == old.split(b"\r\n\r\n", 1)[1], "the body differs"
    old_parsed = message_from_bytes(old, policy=policy.default)
    assert parsed.get_content() == old_parsed.get_content()
    return differing


def check(
    req: NotificationRequest,
    *,
    sender: str = SENDER,
    now: datetime | None = None,
    action_url: str | None = LINK,
) -> tuple[RenderedEmail, int]:
    rendered = render_email(req, sender, now=now, action_url=action_url)
    rendered.stamp(DATE)
    reference = legacy_message(req, sender, now=now, action_url=action_url)
    old = legacy_wire(reference)
    differing = assert_same_mail(old, rendered.wire(), reference)
    # The envelope send_message took from the headers.
    assert rendered.fits_wire
    assert rendered.sender == extract_sender(reference)
    assert rendered.recipients == extract_recipients(reference)
    # The slow path (relays the bytes do not fit) still sends the old message.
    assert legacy_wire(rendered.message()) == old
    return rendered, differing


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(notification_requests(), st.sampled_from([None, LINK]), st.booleans())
def test_the_wire_form_reads_as_the_old_message(
    req: NotificationRequest, action_url: str | None, dated: bool
) -> None:
    now = datetime(2026, 3, 2, 13, 6, tzinfo=UTC) if dated else None
    check(req, action_url=action_url, now=now)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(text(max_size=120), text(max_size=60), text(max_size=60))
@example(HOSTILE, HOSTILE, HOSTILE)
@example("=?utf-8?b?SGk=?= THPT Yên Hòa", "=?utf-8?q?x?=", "Trường=?utf-8?b?SGk=?=")
@example("x" * 90 + " Yên " + "y" * 200, "ü" * 300, "a " * 500)
@example("", "", "")
def test_free_text_headers_and_names_read_as_before(school: str, incident: str, name: str) -> None:
    req = make_request(
        school_name=school,
        incident_id=incident,
        notification_id=incident[::-1],
        recipient=Recipient(tier=Tier.police, name=name, email="truc-ban@ca.example"),
    )
    check(req)


def directory_recipients() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("emails", "leadership_emails", "intake_desk_emails"):
                found.extend((str(node["name"]), email) for email in node.get(key) or [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(DIRECTORY.read_text(encoding="utf-8")))
    return found


def test_a_corpus_of_real_names_kinds_and_steps_reads_as_before() -> None:
    recipients = directory_recipients()
    assert len(recipients) > 10
    schools = sorted({name for name, _ in recipients if name.startswith("Trường")})
    samples = 0
    for i, (name, email) in enumerate(recipients):
        for kind in NotificationKind:
            req = make_request(
                recipient=Recipient(tier=Tier.school, name=name, email=email),
                school_name=schools[i % len(schools)],
                kind=kind,
                step=i % 4,
                severity=list(Severity)[i % len(Severity)],
                category=list(Category)[(i + len(kind.value)) % len(Category)],
                acted_by=Tier.district_office,
                acted_by_name="Phòng GDĐT Ba Đình",
            )
            check(req, sender="Hệ thống cảnh báo <escalate@so-gddt.example>")
            samples += 1
    assert samples == len(recipients) * len(NotificationKind)


def test_the_comparison_can_fail() -> None:
    req = make_request(school_name="Trường THPT Yên Hòa")
    rendered = render_email(req, SENDER)
    rendered.stamp(DATE)
    reference = legacy_message(req, SENDER)
    old, new = legacy_wire(reference), rendered.wire()
    assert_same_mail(old, new, reference)
    # The old fold itself: the same fields as before pass, though this one's Subject decoded
    # wrong then ("THPTYên"); a new field that decoded so would not.
    assert "THPTYên" in str(message_from_bytes(old, policy=policy.default)["Subject"])
    [subject] = [f for f in fields(new) if f.startswith(b"Subject:")]
    lost_space = b"Subject: " + render._encoded_word(
        str(reference["Subject"]).replace("THPT Yên", "THPTYên")
    ).encode("ascii")
    tampered: list[bytes] = [
        new.replace(subject, lost_space),
        new.replace(b"\r\nX-Priority: 1", b""),  # a header lost
        new.replace(b"X-Priority: 1", b"X-Priority: 2"),  # a value changed
        new.replace(b"<phong.gd@bd.example>", b"<phong.gd@bd.example.org>"),  # another address
        new[:-3] + b"X\r\n",  # the body
        new.replace(b"Message-ID:", b"Bcc: x@evil.example\r\nMessage-ID:"),  # an extra header
        new.replace(b"\r\n", b"\n", 1),  # a bare line feed
    ]
    for raw in tampered:
        assert raw != new
        with pytest.raises(AssertionError):
            assert_same_mail(old, raw, reference)


class RecordingClient(aiosmtplib.SMTP):
    """An aiosmtplib client that greets no one and records the transaction it would run."""

    def __init__(self, extensions: Sequence[str]) -> None:
        super().__init__(hostname="relay.invalid")
        self.last_ehlo_response = aiosmtplib.SMTPResponse(250, "\n".join(["relay", *extensions]))
        self.sent: list[tuple[str, list[str], bytes, list[str]]] = []

    async def sendmail(  # type: ignore[override]
        self,
        sender: str,
        recipients: str | Sequence[str],
        message: str | bytes,
        /,
        *,
        mail_options: Any = None,
        rcpt_options: Any = None,
        timeout: Any = None,
    ) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        assert isinstance(message, bytes)
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        self.sent.append((sender, rcpts, message, list(mail_options or [])))
        return {}, "ok"


@pytest.mark.parametrize(
    ("extensions", "sender"),
    [
        (["8BITMIME", "SIZE 10000000"], "Hệ thống <escalate@so.example>"),
        (["SIZE 10000000"], "Hệ thống <escalate@so.example>"),  # a 7-bit relay
        (["8BITMIME", "SMTPUTF8"], "escalate@so.example"),
        (["8BITMIME", "SMTPUTF8"], "cảnh-báo@so.example"),  # an envelope that needs SMTPUTF8
    ],
)
def test_the_relay_gets_the_transaction_send_message_made(
    extensions: list[str], sender: str
) -> None:
    req = make_request(school_name="Trường THPT Yên Hòa", email="PGD@BaDinh.Hanoi.example")
    rendered = render_email(req, sender, action_url=LINK)
    rendered.stamp(DATE)
    reference = legacy_message(req, sender, action_url=LINK)
    reference["Date"] = DATE

    before, after = RecordingClient(extensions), RecordingClient(extensions)
    asyncio.run(before.send_message(reference))
    asyncio.run(_transmit(after, rendered))
    [(old_from, old_to, old, old_options)] = before.sent
    [(new_from, new_to, new, new_options)] = after.sent
    assert (new_from, new_to, new_options) == (old_from, old_to, old_options)
    if rendered.fits_wire and "8BITMIME" in extensions:
        assert_same_mail(old, new, reference)
    else:
        # The old flattening, from the EmailMessage: base64 for a 7-bit relay, UTF-8 headers
        # for an SMTPUTF8 envelope.
        assert new == old


def test_a_plain_email_message_goes_as_before() -> None:
    msg = render.render_fallback_email("inc-1", Severity.critical, SENDER, ["desk@so.example"])
    msg["Date"] = DATE
    before, after = RecordingClient(["8BITMIME"]), RecordingClient(["8BITMIME"])
    asyncio.run(before.send_message(msg))
    asyncio.run(_transmit(after, msg))
    assert after.sent == before.sent


def test_the_body_encoding_follows_the_standard_library() -> None:
    # Lines over 998 octets: quoted-printable or base64, as set_content chooses.
    for description in ("a" * 1200, "Trường " * 400, "x\n" * 20 + "é" * 999, "\u00e9" * 700):
        check(make_request(description=description))


def test_email_message_is_the_old_render_email() -> None:
    for req in (make_request(), make_request(kind=NotificationKind.resolved, step=2)):
        now = datetime(2026, 3, 2, 13, 6, tzinfo=UTC)
        assert (
            email_message(req, SENDER, now=now, action_url=LINK).as_bytes()
            == legacy_message(req, SENDER, now=now, action_url=LINK).as_bytes()
        )
