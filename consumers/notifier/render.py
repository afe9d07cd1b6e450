"""Turn a notification request into the e-mail a recipient reads.

Pure: no clock, no network. The Message-ID is derived from the incident, recipient and step so a
redelivered request produces the same message id and mail clients can fold duplicates.

Total: every value the NotificationRequest contract accepts renders (the property tests in
tests/unit/test_render_properties.py hold it to that). Dates that cannot be moved to Hanoi time
are shown as given; a value meant for one line (a name, a school) shows its line breaks and
control characters escaped, so it can never fake a line of its own ("Severity: LOW") in the body.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from email import policy as email_policy
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from schemas.common import Severity, Tier
from schemas.notifications import NotificationKind, NotificationRequest
from schemas.reports import ReporterContact

# Hanoi has been on UTC+7 without daylight saving since 1975; a fixed offset avoids needing tzdata.
HANOI = timezone(timedelta(hours=7), "UTC+7")
SHORT_ID_CHARS = 16
_WS = re.compile(r"\s+")


def message_id_for(req: NotificationRequest) -> str:
    """Stable Message-ID for (incident, recipient, step): a retry or replay reuses it.

    News of an acknowledgement or resolution, and a request for review, are messages of their
    own (their notification ids differ), not a repeat of the step's alert to the same address.
    """
    raw = f"{req.incident_id}|{req.recipient.email.lower()}|{req.step}"
    if req.kind in (
        NotificationKind.acknowledged,
        NotificationKind.resolved,
        NotificationKind.review,
        NotificationKind.update,
    ):
        raw += f"|{req.notification_id}"
    return f"<{hashlib.sha256(raw.encode('utf-8')).hexdigest()[:32]}@escalate.local>"


def short_incident_id(incident_id: str) -> str:
    """Enough of the id to tell incidents apart in an inbox list; the body has the full id."""
    return incident_id[:SHORT_ID_CHARS].rstrip("-_.:")


# Bidi overrides and isolates reorder what a reader sees (the "Trojan source" trick).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(char: str) -> str:
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    return f"\\u{ord(char):04x}"


def _unsafe(char: str, keep: str) -> bool:
    """Control, line-separating, bidi-reordering or unpaired-surrogate characters."""
    if char in keep:
        return False
    return char in _BIDI or unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp")


def _inline(text: str) -> str:
    """A value for a line of its own: every line break and control character shown escaped."""
    return "".join(_escape(c) if _unsafe(c, "") else c for c in text)


def _block(text: str) -> str:
    """Free text (the report): its own line breaks and tabs kept, other controls escaped."""
    text = text.replace("\r\n", "\n")
    return "".join(_escape(c) if _unsafe(c, "\n\t") else c for c in text)


def _quoted(text: str) -> list[str]:
    """The reporter's words, each line quoted, so none can pass for one of ours."""
    return [f"> {line}" for line in _block(text).split("\n")]


def _one_line(text: str) -> str:
    """Header values must not carry line breaks (header injection); collapse all whitespace."""
    return _inline(_WS.sub(" ", text).strip())


def _when(value: datetime | None) -> str:
    if value is None:
        return "không rõ / unknown"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        local = value.astimezone(HANOI).strftime("%Y-%m-%d %H:%M")
        utc = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError):
        # Near year 1 or 9999 the shift to another offset leaves datetime's range; the value
        # is still a fact worth showing, exactly as it was given.
        return f"{value.isoformat()} (như đã nhận / as received)"
    return f"{local} (giờ Hà Nội / Hanoi time, UTC+7) — {utc}"


KIND_SUBJECT: dict[NotificationKind, str] = {
    NotificationKind.first_notice: "",
    NotificationKind.reminder: "Nhắc lại / Reminder: ",
    NotificationKind.escalation: "Chuyển cấp / Escalated: ",
    NotificationKind.acknowledged: "Đã xác nhận / Acknowledged: ",
    NotificationKind.resolved: "Đã xử lý / Resolved: ",
    NotificationKind.review: "Cần xem xét / Review needed: ",
    NotificationKind.update: "Báo cáo mới / New reports: ",
}

KIND_OPENING: dict[NotificationKind, str] = {
    NotificationKind.first_notice: "Thông báo lần đầu / First notice",
    NotificationKind.reminder: "NHẮC LẠI: quý đơn vị chưa xác nhận đã tiếp nhận"
    " / REMINDER: your organisation has not acknowledged this incident yet",
    NotificationKind.escalation: "CHUYỂN CẤP: các đơn vị được báo trước chưa xác nhận kịp thời"
    " / ESCALATED: the organisations told first did not acknowledge in time",
    NotificationKind.review: "CẦN XEM XÉT: hệ thống không chắc chắn về mức độ của báo cáo này"
    " / REVIEW: the classifier is unsure how serious this report is",
    NotificationKind.update: "CẬP NHẬT: có thêm báo cáo về sự cố quý đơn vị đã được báo"
    " / UPDATE: more reports came in about an incident you were already told of",
}


def render_subject(req: NotificationRequest) -> str:
    """Severity and category first so the urgent ones stand out in a crowded inbox."""
    tags = f"[ESCALATE][{req.severity.value.upper()}]"
    if req.step > 0:
        tags += f"[STEP {req.step}]"
    school = req.school_name if not req.unknown_school else f"{req.school_name} (?)"
    what = KIND_SUBJECT[req.kind]
    if req.kind in (NotificationKind.acknowledged, NotificationKind.resolved) and req.acted_by:
        what = f"{what}{req.acted_by.value} — "
    # category and severity are enums; everything else may hold anything the contract allows
    return _one_line(
        f"{tags} {what}{req.category.value} — {school} — {short_incident_id(req.incident_id)}"
    )


def _reports_block(req: NotificationRequest) -> list[str]:
    if len(req.report_ids) == len(req.tracking_codes):
        return [
            f"  - {_inline(rid)} (mã theo dõi / tracking code: {_inline(code)})"
            for rid, code in zip(req.report_ids, req.tracking_codes, strict=True)
        ]
    lines = [f"  - {_inline(rid)}" for rid in req.report_ids]
    if req.tracking_codes:
        lines.append(
            "  Mã theo dõi / tracking codes: " + ", ".join(map(_inline, req.tracking_codes))
        )
    return lines


def _contact_lines(req: NotificationRequest, contact: ReporterContact | None) -> list[str]:
    # Routing strips the contact for tiers that may not see it; the school tier never does, so
    # a request that still carries one for a school is treated as a routing slip, not a licence.
    if req.recipient.tier is Tier.school:
        contact = None
    if contact is None or not (contact.name or contact.phone or contact.email):
        return ["Liên hệ người báo cáo / Reporter contact: không kèm theo / not included"]
    lines = ["Liên hệ người báo cáo / Reporter contact (thông tin nhạy cảm / sensitive):"]
    if contact.name:
        lines.append(f"  Tên / Name: {_inline(contact.name)}")
    if contact.phone:
        lines.append(f"  Điện thoại / Phone: {_inline(contact.phone)}")
    if contact.email:
        lines.append(f"  Email: {_inline(contact.email)}")
    return lines


def _contact_block(req: NotificationRequest) -> list[str]:
    return _contact_lines(req, req.contact)


def _later_block(req: NotificationRequest) -> list[str]:
    """The reports that joined the incident after the first: the count, then the latest ones
    (each quoted like the first, its contact redacted by the same rule)."""
    if req.report_count <= 1 and not req.later_reports:
        return []
    lines = [
        f"Số báo cáo về sự việc này / Reports of this event: {req.report_count}"
        + (
            f" ({req.new_reports} mới từ thư trước / new since the last mail)"
            if req.new_reports
            else ""
        ),
    ]
    shown = req.later_reports
    if len(shown) < req.report_count - 1:
        lines.append(f"Các báo cáo sau gần nhất / The latest later reports ({len(shown)}):")
    elif shown:
        lines.append("Các báo cáo sau / Later reports:")
    for n, later in enumerate(shown, 1):
        head = (
            f"  [{n}] {_inline(later.tracking_code)} — {later.severity.value.upper()}"
            f" / {later.category.value} — {_when(later.received_at)}"
        )
        lines.append(head)
        if later.immediate_danger:
            lines.append(
                "      !! Trẻ đang gặp nguy hiểm tức thời / A child is in immediate danger"
            )
        lines += [f"    {line}" for line in _quoted(later.description)]
        lines += [f"    {line}" for line in _contact_lines(req, later.contact)]
    return ["", *lines]


def _action_block(action_url: str | None) -> list[str]:
    if action_url is None:
        return [
            "Thư này được gửi tự động; vui lòng xác nhận đã tiếp nhận theo quy trình."
            " / This message was sent automatically; please acknowledge it through the usual"
            " process.",
        ]
    return [
        "Xác nhận đã tiếp nhận, báo đã xử lý xong hoặc ghi chú tại liên kết riêng của quý đơn vị"
        " (không chuyển tiếp thư này):",
        "Acknowledge, mark as handled or add a note at your organisation's personal link"
        " (do not forward this mail):",
        f"  {action_url}",
        "Chưa có đơn vị nào xác nhận thì sự việc sẽ được chuyển lên cấp trên."
        " / If nobody acknowledges, the incident is escalated to the next level.",
    ]


def render_status_body(req: NotificationRequest, action_url: str | None = None) -> str:
    """The short mail everyone already told gets when an organisation acknowledges or resolves."""
    acted = "xác nhận đã tiếp nhận / acknowledged"
    if req.kind is NotificationKind.resolved:
        acted = "báo đã xử lý xong, không cần làm thêm / resolved, no further action"
    by = req.acted_by.value if req.acted_by else "không rõ / unknown"
    lines = [
        "CẬP NHẬT SỰ CỐ / INCIDENT UPDATE",
        "",
        f"Mã sự cố / Incident: {_inline(req.incident_id)}",
        f"Mức độ / Severity: {req.severity.value.upper()}",
        f"Trường / School: {_inline(req.school_name)} (mã / code: {_inline(req.school_code)})",
        f"Đơn vị / Organisation: {by} ({_inline(req.acted_by_name or '')})",
        f"Đã / Has: {acted}",
        "",
        "Thư này chỉ để thông báo. / For your information only.",
    ]
    if action_url is not None:
        lines += ["Tình trạng / Status:", f"  {action_url}"]
    return "\n".join(lines) + "\n"


def render_body(req: NotificationRequest, action_url: str | None = None) -> str:
    """Plain text with Vietnamese / English headings; every fact the recipient needs to act."""
    if req.kind in (NotificationKind.acknowledged, NotificationKind.resolved):
        return render_status_body(req, action_url)
    notice = KIND_OPENING[req.kind]
    if req.step > 0:
        notice += f" — lần / step {req.step}"
    lines = [
        "CẢNH BÁO SỰ CỐ AN TOÀN TRỰC TUYẾN / ONLINE-SAFETY INCIDENT ALERT",
        notice,
        "",
        f"Gửi / To: {_inline(req.recipient.name)} ({req.recipient.tier.value})",
        f"Mã sự cố / Incident: {_inline(req.incident_id)}",
        f"Mức độ / Severity: {req.severity.value.upper()}",
        f"Loại / Category: {req.category.value}",
        f"Trường / School: {_inline(req.school_name)} (mã / code: {_inline(req.school_code)})",
        f"Quận, huyện / District: {_inline(req.district_name or 'không rõ / unknown')}",
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
        *_quoted(req.description),
        "",
        "Các báo cáo / Reports covered:",
        *_reports_block(req),
        *_later_block(req),
        "",
        "Lý do phân loại / Why it was classified this way:",
        *([f"  - {_inline(reason)}" for reason in req.reasons] or ["  - (không có / none given)"]),
        f"Phiên bản quy tắc / Rules version: {_inline(req.rules_version)}",
        "",
        "Bằng chứng / Evidence:",
        *([f"  - {_inline(url)}" for url in req.evidence_urls] or ["  - (không có / none)"]),
        "",
        *_contact_block(req),
        "",
        *_action_block(action_url),
    ]
    return "\n".join(lines) + "\n"


def _display_name(name: str) -> str:
    """Letters, digits, marks, spaces and a little punctuation: a display name that needs no
    quoting or escaping, which the header parser of the reader's client may get wrong."""
    kept = "".join(c if unicodedata.category(c)[0] in "LNM" or c in " .-'&/" else " " for c in name)
    return _WS.sub(" ", kept).strip()


def _address(name: str, email: str) -> Address | str:
    try:
        return Address(display_name=_display_name(name), addr_spec=email)
    except (ValueError, IndexError, MessageError):
        # An address the header parser dislikes still gets delivered by its bare form (the
        # contract keeps line breaks and a second address out of it).
        return email


MAIL_POLICY = email_policy.default.clone(max_line_length=998)


def render_email(
    req: NotificationRequest,
    sender: str,
    *,
    now: datetime | None = None,
    action_url: str | None = None,
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
    msg["X-Escalate-Kind"] = req.kind.value
    msg.set_content(render_body(req, action_url), charset="utf-8")
    return msg


def fallback_message_id(incident_id: str) -> str:
    """One id per incident: however many of its notifications fail, the desk's mail client
    folds the fallback mails into one."""
    raw = f"{incident_id}|fallback"
    return f"<{hashlib.sha256(raw.encode('utf-8')).hexdigest()[:32]}@escalate.local>"


def render_fallback_email(
    incident_id: str, severity: Severity, sender: str, recipients: list[str]
) -> EmailMessage:
    """The plain mail to the city intake desk when a critical notification was dead-lettered.

    It carries only the incident id and severity: the message that failed may be the very thing
    that cannot be rendered, and the desk reads the details from the dead-letter topic.
    """
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = _one_line(
        f"[ESCALATE][{severity.value.upper()}] Không gửi được thông báo / Notification"
        f" not delivered — {short_incident_id(incident_id)}"
    )
    msg["Message-ID"] = fallback_message_id(incident_id)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Escalate-Incident"] = _one_line(incident_id)
    msg["X-Escalate-Severity"] = severity.value
    msg["Importance"] = "high"
    msg["X-Priority"] = "1"
    body = [
        "MỘT THÔNG BÁO VỀ SỰ CỐ NGHIÊM TRỌNG KHÔNG GỬI ĐƯỢC",
        "A NOTIFICATION ABOUT A CRITICAL INCIDENT COULD NOT BE DELIVERED",
        "",
        f"Mã sự cố / Incident: {_inline(incident_id)}",
        f"Mức độ / Severity: {severity.value.upper()}",
        "",
        "Ít nhất một người nhận chưa được báo. Hãy xem hàng đợi thư lỗi (deadletter.v1) và"
        " liên hệ trực tiếp các đơn vị liên quan.",
        "At least one recipient was not told. Read the dead-letter topic (deadletter.v1) and"
        " contact the offices concerned directly.",
    ]
    msg.set_content("\n".join(body) + "\n", charset="utf-8")
    return msg
