"""Turn a notification request into the e-mail a recipient reads.

Pure: no clock, no network. The Message-ID is derived from the incident, recipient and step so a
redelivered request produces the same message id and mail clients can fold duplicates.

Total: every value the NotificationRequest contract accepts renders (the property tests in
tests/unit/test_render_properties.py hold it to that). Dates that cannot be moved to Hanoi time
are shown as given; a value meant for one line (a name, a school) shows its line breaks and
control characters escaped, so it can never fake a line of its own ("Severity: LOW") in the body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from email import policy as email_policy
from email import quoprimime
from email.errors import MessageError
from email.headerregistry import Address, AddressHeader
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache, partial
from typing import Any

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
    # Printable text (the usual case) has no control, separator, surrogate or bidi character
    # (bidi controls are format characters, which are not printable): nothing to escape.
    if text.isprintable():
        return text
    return "".join(_escape(c) if _unsafe(c, "") else c for c in text)


def _block(text: str) -> str:
    """Free text (the report): its own line breaks and tabs kept, other controls escaped."""
    text = text.replace("\r\n", "\n")
    if text.replace("\n", "").replace("\t", "").isprintable():
        return text
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


# The policy of the EmailMessage (``email_message``): its own ``as_bytes()`` leaves headers up to
# RFC 5322's hard limit unfolded. On the wire aiosmtplib flattened it with WIRE_POLICY (below),
# folding at 78 columns, where CPython lost the space before an encoded word that starts a
# continuation line ("THPT Yên Hòa" arrived as "THPTYên Hòa"); render_email's own folding
# does not.
MAIL_POLICY = email_policy.default.clone(max_line_length=998)


def _headers(req: NotificationRequest, now: datetime | None) -> list[tuple[str, str]]:
    """The headers after From and To, in the order they are set, with the values the standard
    library is (and was) given for them."""
    after = [("Subject", render_subject(req)), ("Message-ID", message_id_for(req))]
    if now is not None:
        after.append(("Date", format_datetime(now if now.tzinfo else now.replace(tzinfo=UTC))))
    after += [
        ("Auto-Submitted", "auto-generated"),
        ("X-Escalate-Incident", _one_line(req.incident_id)),
        ("X-Escalate-Step", str(req.step)),
        ("X-Escalate-Severity", req.severity.value),
        ("X-Escalate-Notification-Id", _one_line(req.notification_id)),
    ]
    if req.severity is Severity.critical or req.immediate_danger:
        after += [("Importance", "high"), ("X-Priority", "1")]
    after.append(("X-Escalate-Kind", req.kind.value))
    return after


def email_message(
    req: NotificationRequest,
    sender: str,
    *,
    now: datetime | None = None,
    action_url: str | None = None,
    body: str | None = None,
) -> EmailMessage:
    """The notification as an ``EmailMessage`` built by the standard library, header by header:
    what ``render_email`` returned before it rendered to bytes. Kept for reading a mail (tests,
    tools), for the relay that needs it flattened otherwise (no 8BITMIME, or SMTPUTF8), and as
    the reference the wire form is tested against (tests/unit/test_render_wire.py)."""
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["From"] = sender
    msg["To"] = _address(req.recipient.name, req.recipient.email)
    for name, value in _headers(req, now):
        msg[name] = value
    text = render_body(req, action_url) if body is None else body
    msg.set_content(text, charset="utf-8")
    return msg


# ---- the wire form ----
#
# aiosmtplib's send_message flattens an EmailMessage with email.policy.SMTP (CRLF line ends,
# headers folded at 78 columns, RFC 2047 encoded words for non-ASCII) and hands the bytes to
# sendmail. The standard library parses each header when it is set and again when it is folded:
# that was about 70% of the notifier's time per mail (docs/PERFORMANCE.md). A notification's
# headers come in few shapes (words of printable text, one mailbox), so those are encoded here
# directly and the mail is rendered to its bytes once; a value of any other shape is set and
# folded by the standard library exactly as before. tests/unit/test_render_wire.py holds the
# two to identical decoded headers, envelope and body bytes.

WIRE_POLICY = email_policy.SMTP
WIRE_MAX_LINE = 78  # WIRE_POLICY.max_line_length: RFC 5322's "should"
HARD_MAX_LINE = 998  # RFC 5322's "must"
_EW_OPEN = "=?utf-8?b?"
_EW_CLOSE = "?="
_EW_OVERHEAD = len(_EW_OPEN) + len(_EW_CLOSE)
_EW_MAX_B64 = (75 - _EW_OVERHEAD) // 4 * 4  # RFC 2047: an encoded word is at most 75 long
_PLAIN_MAILBOX = re.compile(
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)
_NEWLINES = re.compile(r"\r\n|\r|\n")
CRLF = b"\r\n"


def _utf8_len(char: str) -> int:
    code = ord(char)
    return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4


def _encoded_word(text: str) -> str:
    return _EW_OPEN + base64.b64encode(text.encode("utf-8")).decode("ascii") + _EW_CLOSE


class _Field:
    """One header field laid out on lines of at most 78 characters, broken only at the spaces
    between tokens (an ASCII word, an encoded word, an angle address): unfolding gives back the
    tokens with one space between each."""

    def __init__(self, name: str) -> None:
        self.lines: list[str] = []
        self.line = name + ":"
        self.empty = True

    def fits(self, token: str) -> bool:
        """Whether ``token`` goes on the current line, or (after the first) on a line of its own."""
        return len(self.line) + 1 + len(token) <= WIRE_MAX_LINE or (
            not self.empty and 1 + len(token) <= WIRE_MAX_LINE
        )

    def put(self, token: str) -> None:
        if self.line and (self.empty or len(self.line) + 1 + len(token) <= WIRE_MAX_LINE):
            self.line += " " + token
        else:
            if self.line:
                self.lines.append(self.line)
            self.line = " " + token
        self.empty = False

    def encode(self, text: str) -> None:
        """``text`` (non-empty) as RFC 2047 encoded words. The white space between two encoded
        words is dropped by decoders, so the text may be split between any two characters."""
        start, end = 0, len(text)
        while start < end:
            room = min(WIRE_MAX_LINE - len(self.line) - 1 - _EW_OVERHEAD, _EW_MAX_B64) // 4 * 3
            stop, used = start, 0
            while stop < end:
                size = _utf8_len(text[stop])
                if used + size > room:
                    break
                used += size
                stop += 1
            if stop == start:
                if not self.empty:
                    self.lines.append(self.line)
                    self.line = ""  # the next encoded word starts a line of its own
                    continue
                stop = start + 1  # never happens with our short header names
            self.put(_encoded_word(text[start:stop]))
            start = stop

    def wire(self) -> bytes | None:
        """The folded field, or None if a line would break RFC 5322's hard limit."""
        lines = [*self.lines, self.line]
        if any(len(line) > HARD_MAX_LINE for line in lines):
            return None
        return "\r\n".join(lines).encode("ascii") + CRLF


def _words(value: str) -> list[str] | None:
    """The words of a printable value with single spaces between them; None for other values
    (empty, other white space or control characters, text that looks like an encoded word)."""
    if not value or not value.isprintable() or "=?" in value:
        return None
    words = value.split(" ")
    return None if "" in words else words


def _stdlib_field(name: str, value: object) -> bytes:
    """The field as the notifier used to send it: set on an EmailMessage (MAIL_POLICY) and
    folded by aiosmtplib's flattening (WIRE_POLICY)."""
    name, header = MAIL_POLICY.header_store_parse(name, value)
    return WIRE_POLICY.fold_binary(name, header)


# Headers from a small vocabulary (severity, kind, step, fixed values): folded once each.
_fixed_field = lru_cache(maxsize=1024)(_stdlib_field)


def _unstructured(name: str, value: str) -> bytes:
    """An unstructured field (Subject, X-Escalate-*): ASCII words as they are, the rest as
    encoded words; a run of non-ASCII words is encoded with its inner spaces, so every space
    survives decoding (the standard library's folding loses the one before an encoded word that
    starts a continuation line: "THPT Yên" arrived as "THPTYên")."""
    words = _words(value)
    if words is None:
        return _stdlib_field(name, value)
    field = _Field(name)
    run: str | None = None  # words waiting to be encoded together
    after_encoded = False
    for word in words:
        if word.isascii():
            if run is not None:
                field.encode(run)
                run, after_encoded = None, True
            if field.fits(word):
                field.put(word)
                after_encoded = False
                continue
        # Non-ASCII, or an ASCII word too long for a line: encoded. A space between two encoded
        # words would be dropped, so it goes inside the second.
        if run is None:
            run = " " + word if after_encoded else word
        else:
            run += " " + word
    if run is not None:
        field.encode(run)
    return field.wire() or _stdlib_field(name, value)


def _to_field(name: str, email: str) -> tuple[bytes, list[str]]:
    """The To field and the envelope recipients aiosmtplib would take from it."""
    display = _display_name(name)
    words = display.split(" ") if display else []
    field = _Field("To")
    if _PLAIN_MAILBOX.fullmatch(email) and display.isprintable():
        # Display name words are letters, digits and -'&/ (atoms) or need quoting or encoding
        # (non-ASCII, '.'): those, from the first to the last, become one encoded word. One
        # only: decoders disagree on the space between two encoded words in a name.
        special = [i for i, word in enumerate(words) if not word.isascii() or "." in word]
        tokens = words
        if special:
            first, last = special[0], special[-1]
            encoded = _encoded_word(" ".join(words[first : last + 1]))
            tokens = [*words[:first], encoded, *words[last + 1 :]]
        if max(map(len, tokens), default=0) <= 75:
            for token in tokens:
                field.put(token)
            field.put(f"<{email}>" if words else email)
            wire = field.wire()
            if wire is not None:
                return wire, [email]
    _, header = MAIL_POLICY.header_store_parse("To", _address(name, email))
    return WIRE_POLICY.fold_binary("To", header), _addr_specs(header)


def _addr_specs(header: object) -> list[str]:
    """The addresses of an address header, as aiosmtplib's send_message takes them."""
    if not isinstance(header, AddressHeader):
        return []
    return [address.addr_spec for address in header.addresses]


@lru_cache(maxsize=16)
def _from_field(sender: str) -> tuple[bytes, str | None]:
    """The From field (one sender per process: folded once) and the envelope sender."""
    _, header = MAIL_POLICY.header_store_parse("From", sender)
    specs = _addr_specs(header)
    return WIRE_POLICY.fold_binary("From", header), specs[0] if specs else None


def _body_wire(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, body bytes on the wire), as ``set_content(text,
    charset="utf-8")`` under MAIL_POLICY and aiosmtplib's flattening for an 8BITMIME relay make
    them (email.contentmanager's choice: 7bit or 8bit when every line fits in 998 octets, else
    quoted-printable or base64, whichever is shorter on the first ten lines)."""
    lines = text.encode("utf-8").splitlines()
    limit = MAIL_POLICY.max_line_length or HARD_MAX_LINE
    if max((len(line) for line in lines), default=0) <= limit:
        data = b"\n".join(lines) + b"\n"
        return ("7bit" if data.isascii() else "8bit"), data.replace(b"\n", CRLF)
    sniff = b"\n".join(lines[:10]) + b"\n"
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), limit)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        data = b"\n".join(lines) + b"\n"
        step = limit // 4 * 3
        payload = "".join(
            binascii.b2a_base64(data[i : i + step]).decode("ascii")
            for i in range(0, len(data), step)
        )
        cte = "base64"
    else:
        cte = "quoted-printable"
        if len(lines) <= 10:
            payload = sniff_qp
        else:
            payload = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), limit)
    return cte, "\r\n".join(_NEWLINES.split(payload)).encode("ascii")


class RenderedEmail:
    """A notification rendered once, as the bytes that go to the relay.

    ``wire()`` is the message as aiosmtplib's ``send_message`` flattened the ``EmailMessage``
    for a relay that takes 8BITMIME, and ``sender`` and ``recipients`` the envelope it took from
    its headers: the sender hands them to ``sendmail`` as they are. The Date is stamped at the
    first attempt to send (``stamp``) and kept for the retries, as it was on the EmailMessage.
    ``message()`` is the same mail as an EmailMessage, built on first use: for reading it
    (``msg["To"]``, ``get_content()``) and for a relay the bytes do not fit (no 8BITMIME, or an
    envelope that needs SMTPUTF8), which gets it flattened by aiosmtplib as before.
    """

    __slots__ = (
        "_build",
        "_date",
        "_dated",
        "_head",
        "_message",
        "_mime",
        "body",
        "recipients",
        "sender",
    )

    def __init__(
        self,
        head: bytes,
        mime: bytes,
        body: bytes,
        *,
        sender: str | None,
        recipients: list[str],
        dated: bool,
        build: Callable[[], EmailMessage],
    ) -> None:
        self._head = head  # From ... X-Escalate-Kind (with the Date if it was given)
        self._mime = mime  # Content-Type, Content-Transfer-Encoding, MIME-Version
        self.body = body
        self.sender = sender
        self.recipients = recipients
        self._dated = dated
        self._date: str | None = None  # stamped at send time: after MIME-Version, as it was set
        self._build = build
        self._message: EmailMessage | None = None

    @property
    def fits_wire(self) -> bool:
        """Whether ``wire()`` may go to ``sendmail`` as it is: there is an envelope to take
        from the headers, all ASCII (an address that needs SMTPUTF8 changes the flattening)."""
        return (
            self.sender is not None
            and bool(self.recipients)
            and self.sender.isascii()
            and all(r.isascii() for r in self.recipients)
        )

    @property
    def dated(self) -> bool:
        return self._dated or self._date is not None

    def stamp(self, date: str) -> None:
        """Set the Date header (``format_datetime`` text) unless the mail has one already."""
        if self.dated:
            return
        self._date = date
        if self._message is not None and "Date" not in self._message:
            self._message["Date"] = date

    def wire(self) -> bytes:
        """The message as it goes to the relay (CRLF line ends, 8bit body)."""
        date = b"" if self._date is None else _date_field(self._date)
        return b"".join((self._head, self._mime, date, CRLF, self.body))

    def message(self) -> EmailMessage:
        """The same mail as an EmailMessage (``email_message``), Date included once stamped."""
        if self._message is None:
            msg = self._build()
            if self._date is not None and "Date" not in msg:
                msg["Date"] = self._date
            self._message = msg
        return self._message

    # Read like the EmailMessage render_email used to return.

    def __getitem__(self, name: str) -> Any:
        return self.message()[name]

    def __contains__(self, name: str) -> bool:
        return name in self.message()

    def get(self, name: str, failobj: Any = None) -> Any:
        return self.message().get(name, failobj)

    def get_content(self) -> Any:
        return self.message().get_content()


# Mails stamped within one second share their Date field.
_date_field = lru_cache(maxsize=4)(partial(_stdlib_field, "Date"))


def render_email(
    req: NotificationRequest,
    sender: str,
    *,
    now: datetime | None = None,
    action_url: str | None = None,
) -> RenderedEmail:
    """Render the message to its bytes, once. ``now`` fixes the Date header (tests); by default
    the sender stamps it at the first attempt.

    Header injection stays impossible: every value meant for one line is on one line already
    (``_one_line``, ``_display_name``); on the wire an ASCII word is printable by construction
    and anything else is base64 inside an encoded word; a value of any other shape is set and
    folded by the standard library, which refuses line breaks.
    """
    body = render_body(req, action_url)
    from_field, envelope_sender = _from_field(sender)
    to_field, recipients = _to_field(req.recipient.name, req.recipient.email)
    head = [from_field, to_field]
    for name, value in _headers(req, now):
        if name in _FREE_TEXT:
            head.append(_unstructured(name, value))
        elif name == "Message-ID" and _MESSAGE_ID.fullmatch(value):
            head.append(b"Message-ID: " + value.encode("ascii") + CRLF)
        elif name == "Date":
            head.append(_date_field(value))
        else:
            head.append(_fixed_field(name, value))
    cte, body_wire = _body_wire(body)
    return RenderedEmail(
        b"".join(head),
        _mime_fields(cte),
        body_wire,
        sender=envelope_sender,
        recipients=recipients,
        dated=now is not None,
        build=lambda: email_message(req, sender, now=now, action_url=action_url, body=body),
    )


# Headers whose values come from the request's free text; the others are from small vocabularies.
_FREE_TEXT = frozenset(("Subject", "X-Escalate-Incident", "X-Escalate-Notification-Id"))
_MESSAGE_ID = re.compile(r"<[0-9a-f]{32}@escalate\.local>")


@lru_cache(maxsize=8)
def _mime_fields(cte: str) -> bytes:
    """Content-Type, Content-Transfer-Encoding and MIME-Version, as set_content adds them."""
    return b"".join(
        (
            _stdlib_field("Content-Type", 'text/plain; charset="utf-8"'),
            _stdlib_field("Content-Transfer-Encoding", cte),
            _stdlib_field("MIME-Version", "1.0"),
        )
    )


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
