"""Turn a notification request into the e-mail a recipient reads.

Pure: no clock, no network. The Message-ID is derived from the incident, recipient and step so a
redelivered request produces the same message id and mail clients can fold duplicates.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from schemas.common import Severity, Tier
from schemas.notifications import NotificationRequest

# Hanoi has been on UTC+7 without daylight saving since 1975; a fixed offset avoids needing tzdata.
HANOI = timezone(timedelta(hours=7), "UTC+7")
SHORT_ID_CHARS = 16
_WS = re.compile(r"\s+")


def message_id_for(req: NotificationRequest) -> str:
    """Stable Message-ID for (incident, recipient, step): a retry or replay reuses it."""
    raw = f"{req.incident_id}|{req.recipient.email.lower()}|{req.step}"
    return f"<{hashlib.sha256(raw.encode('utf-8')).hexdigest()[:32]}@escalate.local>"


def short_incident_id(incident_id: str) -> str:
    """Enough of the id to tell incidents apart in an inbox list; the body has the full id."""
    return incident_id[:SHORT_ID_CHARS].rstrip("-_.:")


def _one_line(text: str) -> str:
    """Header values must not carry line breaks (header injection); collapse all whitespace."""
    return _WS.sub(" ", text).strip()


def _when(value: datetime | None) -> str:
    if value is None:
        return "không rõ / unknown"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    local = value.astimezone(HANOI).strftime("%Y-%m-%d %H:%M")
    utc = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{local} (giờ Hà Nội / Hanoi time, UTC+7) — {utc}"


def render_subject(req: NotificationRequest) -> str:
    """Severity and category first so the urgent ones stand out in a crowded inbox."""
    tags = f"[ESCALATE][{req.severity.value.upper()}]"
    if req.step > 0:
        tags += f"[STEP {req.step}]"
    school = req.school_name if not req.unknown_school else f"{req.school_name} (?)"
    return _one_line(
        f"{tags} {req.category.value} — {school} — {short_incident_id(req.incident_id)}"
    )


def _reports_block(req: NotificationRequest) -> list[str]:
    if len(req.report_ids) == len(req.tracking_codes):
        return [
            f"  - {rid} (mã theo dõi / tracking code: {code})"
            for rid, code in zip(req.report_ids, req.tracking_codes, strict=True)
        ]
    lines = [f"  - {rid}" for rid in req.report_ids]
    if req.tracking_codes:
        lines.append("  Mã theo dõi / tracking codes: " + ", ".join(req.tracking_codes))
    return lines


def _contact_block(req: NotificationRequest) -> list[str]:
    # Routing strips the contact for tiers that may not see it; the school tier never does, so
    # a request that still carries one for a school is treated as a routing slip, not a licence.
    contact = req.contact if req.recipient.tier is not Tier.school else None
    if contact is None or not (contact.name or contact.phone or contact.email):
        return ["Liên hệ người báo cáo / Reporter contact: không kèm theo / not included"]
    lines = ["Liên hệ người báo cáo / Reporter contact (thông tin nhạy cảm / sensitive):"]
    if contact.name:
        lines.append(f"  Tên / Name: {contact.name}")
    if contact.phone:
        lines.append(f"  Điện thoại / Phone: {contact.phone}")
    if contact.email:
        lines.append(f"  Email: {contact.email}")
    return lines


def render_body(req: NotificationRequest) -> str:
    """Plain text with Vietnamese / English headings; every fact the recipient needs to act."""
    if req.step == 0:
        notice = "Thông báo lần đầu / First notice"
    else:
        notice = (
            f"Nhắc / leo thang lần {req.step} (chưa được xác nhận)"
            f" / Escalation step {req.step} (not yet acknowledged)"
        )
    lines = [
        "CẢNH BÁO SỰ CỐ AN TOÀN TRỰC TUYẾN / ONLINE-SAFETY INCIDENT ALERT",
        notice,
        "",
        f"Gửi / To: {req.recipient.name} ({req.recipient.tier.value})",
        f"Mã sự cố / Incident: {req.incident_id}",
        f"Mức độ / Severity: {req.severity.value.upper()}",
        f"Loại / Category: {req.category.value}",
        f"Trường / School: {req.school_name} (mã / code: {req.school_code})",
        f"Quận, huyện / District: {req.district_name or 'không rõ / unknown'}",
    ]
    flags = []
    if req.immediate_danger:
        flags.append(
            "!! Người báo cáo cho biết có trẻ đang gặp nguy hiểm tức thời"
            " / The reporter says a child is in immediate danger"
        )
    if req.unknown_school:
        flags.append(
            "!! Trường không có trong danh bạ — chuyển đến bộ phận tiếp nhận của Sở"
            " / Unknown school — routed to the city intake desk"
        )
    if req.needs_review:
        flags.append("!! Cần cán bộ xem xét lại phân loại / Needs human review")
    if flags:
        lines += ["", *flags]
    lines += [
        "",
        f"Thời điểm xảy ra / Occurred: {_when(req.occurred_at)}",
        f"Thời điểm tiếp nhận / Received: {_when(req.received_at)}",
        f"Hạn xác nhận / Acknowledge by: {_when(req.ack_due_at)}",
        "",
        "Nội dung báo cáo / What happened:",
        req.description,
        "",
        "Các báo cáo / Reports covered:",
        *_reports_block(req),
        "",
        "Lý do phân loại / Why it was classified this way:",
        *([f"  - {reason}" for reason in req.reasons] or ["  - (không có / none given)"]),
        f"Phiên bản quy tắc / Rules version: {req.rules_version}",
        "",
        "Bằng chứng / Evidence:",
        *([f"  - {url}" for url in req.evidence_urls] or ["  - (không có / none)"]),
        "",
        *_contact_block(req),
        "",
        "Thư này được gửi tự động; vui lòng xác nhận đã tiếp nhận theo quy trình."
        " / This message was sent automatically; please acknowledge it through the usual process.",
    ]
    return "\n".join(lines) + "\n"


def _address(name: str, email: str) -> Address | str:
    try:
        return Address(display_name=_one_line(name), addr_spec=email)
    except (ValueError, IndexError):
        # An address the header parser dislikes still gets delivered by its bare form.
        return email


MAIL_POLICY = email_policy.default.clone(max_line_length=998)


def render_email(
    req: NotificationRequest, sender: str, *, now: datetime | None = None
) -> EmailMessage:
    """Build the message. ``now`` fixes the Date header (tests); by default the header is omitted
    here and set by the sender so each attempt carries its own date."""
    # CPython drops the space between two RFC 2047 words when it folds a long non-ASCII header
    # ("THPT Yên Hòa" arrives as "THPTYên Hòa"); headers up to RFC 5322's hard limit stay unfolded.
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["From"] = sender
    msg["To"] = _address(req.recipient.name, req.recipient.email)
    msg["Subject"] = render_subject(req)
    msg["Message-ID"] = message_id_for(req)
    if now is not None:
        msg["Date"] = format_datetime(now if now.tzinfo else now.replace(tzinfo=UTC))
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Escalate-Incident"] = _one_line(req.incident_id)
    msg["X-Escalate-Step"] = str(req.step)
    msg["X-Escalate-Severity"] = req.severity.value
    msg["X-Escalate-Notification-Id"] = _one_line(req.notification_id)
    if req.severity is Severity.critical or req.immediate_danger:
        msg["Importance"] = "high"
        msg["X-Priority"] = "1"
    msg.set_content(render_body(req), charset="utf-8")
    return msg
