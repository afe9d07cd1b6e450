"""The page a notification mail's personal link opens (Vietnamese by default, English with
?lang=en). Plain HTML forms, no JavaScript: it must work in any phone's mail app browser.

Nothing here reads or writes Kafka; the routes in ``producers/intake/actions.py`` decide what to
show and pass it in. The reporter's contact details never reach this page: whoever holds the
mail may open it, and the school tier must never see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from html import escape

from producers.intake.form import CATEGORY_LABELS, STYLE
from schemas.actions import MAX_NOTE_CHARS, ActionKind
from schemas.common import HANOI_TZ, Category, Severity, Tier
from schemas.escalation import EscalationState, IncidentStatus
from schemas.links import LinkClaims, LinkPurpose

TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "title": "Sự việc cần xử lý",
        "other_lang": "English",
        "summary": "Thông tin sự việc",
        "incident_id": "Mã sự việc",
        "severity": "Mức độ",
        "category": "Loại sự việc",
        "school": "Trường",
        "received": "Tiếp nhận lúc",
        "description": "Nội dung báo cáo",
        "later": "Các báo cáo sau về cùng sự việc",
        "report_count": "Số báo cáo",
        "hanoi_time": "giờ Hà Nội",
        "status": "Tình trạng",
        "status_unknown": "Chưa có thông tin tình trạng (sự việc có thể đang được chuyển đi). "
        "Bạn vẫn có thể xác nhận đã tiếp nhận.",
        "organisations": "Các đơn vị",
        "notified": "đã được báo",
        "not_notified": "chưa được báo",
        "acknowledged_at": "đã xác nhận lúc",
        "not_acknowledged": "chưa xác nhận",
        "resolved_at": "Đã xử lý xong lúc",
        "resolved_by": "bởi",
        "acting_for": "Bạn đang thao tác cho",
        "actions": "Bạn làm gì với sự việc này?",
        "note": "Ghi chú (không bắt buộc)",
        "note_hint": "Tối đa 2000 ký tự. Ghi chú được chuyển cho các đơn vị xử lý.",
        "acknowledge": "Xác nhận đã tiếp nhận",
        "resolve": "Đã xử lý xong",
        "resolve_hint": "Chỉ chọn khi sự việc đã được giải quyết và không cần làm gì thêm.",
        "add_note": "Chỉ gửi ghi chú",
        "done_acknowledge": "Đã ghi nhận: bạn đã xác nhận tiếp nhận sự việc.",
        "done_resolve": "Đã ghi nhận: sự việc được đánh dấu là đã xử lý xong.",
        "done_note": "Đã ghi nhận ghi chú của bạn.",
        "done_later": "Tình trạng bên dưới có thể cần ít phút để cập nhật.",
        "review": "Xem xét phân loại",
        "review_intro": "Hệ thống phân loại tự động không chắc chắn về báo cáo này. Hãy đọc "
        "nội dung và chọn mức độ, loại sự việc đúng. Nâng mức độ sẽ báo ngay các đơn vị mà mức "
        "mới yêu cầu; hạ mức độ không rút lại thông báo đã gửi.",
        "classifier": "Hệ thống đã phân loại",
        "reasons": "Căn cứ",
        "no_reasons": "(không có)",
        "flagged": "Hệ thống đánh dấu cần người xem xét.",
        "withheld": "Chỉ mô hình học máy đánh giá mức này (theo quy tắc: {rules}). Chưa báo "
        "cho: {tiers}. Nếu bạn giữ nguyên mức độ và bấm «Lưu phân loại», các đơn vị này sẽ được "
        "báo ngay.",
        "reviewed": "Đã được xem xét bởi",
        "at": "lúc",
        "new_severity": "Mức độ đúng",
        "new_category": "Loại sự việc đúng",
        "reclassify": "Lưu phân loại",
        "reclassify_hint": "Nếu phân loại đã đúng, giữ nguyên và bấm «Lưu phân loại» để xác nhận.",
        "done_reclassify": "Đã ghi nhận phân loại của bạn.",
        "err_review": "Hãy chọn mức độ và loại sự việc trong danh sách.",
        "unavailable": "Hệ thống tạm thời không ghi nhận được. Thao tác của bạn CHƯA được ghi "
        "nhận. Vui lòng thử lại sau ít phút.",
        "err_note_missing": "Hãy viết ghi chú trước khi bấm «Chỉ gửi ghi chú».",
        "err_note_long": "Ghi chú quá dài (tối đa 2000 ký tự).",
        "err_action": "Hãy bấm một trong các nút bên dưới.",
        "err_too_large": "Nội dung gửi quá lớn.",
        "open_again": "Mở lại trang sự việc",
        "contact": "Liên hệ",
        "refused_invalid_title": "Liên kết không hợp lệ",
        "refused_invalid": "Liên kết này không đúng hoặc đã bị sao chép thiếu. Không có gì "
        "được ghi nhận. Hãy mở liên kết trong thư thông báo mới nhất về sự việc, hoặc liên hệ "
        "Sở GDĐT Hà Nội.",
        "refused_expired_title": "Liên kết đã hết hạn",
        "refused_expired": "Liên kết này đã hết hạn. Không có gì được ghi nhận. Hãy dùng liên "
        "kết trong thư thông báo mới nhất về sự việc, hoặc liên hệ Sở GDĐT Hà Nội.",
        "refused_bad_nonce_title": "Trang đã mở quá lâu",
        "refused_bad_nonce": "Không có gì được ghi nhận: trang đã mở quá lâu hoặc không được "
        "gửi từ trang sự việc. Hãy mở lại trang và thao tác lại.",
        "refused_cross_origin_title": "Yêu cầu không đến từ trang sự việc",
        "refused_cross_origin": "Không có gì được ghi nhận. Hãy mở liên kết trong thư rồi bấm "
        "nút ngay trên trang đó.",
        "refused_wrong_purpose_title": "Liên kết không dùng cho trang này",
        "refused_wrong_purpose": "Không có gì được ghi nhận. Hãy dùng đúng liên kết trong thư "
        "thông báo, hoặc liên hệ Sở GDĐT Hà Nội.",
    },
    "en": {
        "title": "Incident for your attention",
        "other_lang": "Tiếng Việt",
        "summary": "The incident",
        "incident_id": "Incident id",
        "severity": "Severity",
        "category": "Kind of incident",
        "school": "School",
        "received": "Received",
        "description": "What was reported",
        "later": "Later reports of the same event",
        "report_count": "Reports",
        "hanoi_time": "Hanoi time",
        "status": "Status",
        "status_unknown": "Status not yet available (the incident may still be on its way). "
        "You can still acknowledge it.",
        "organisations": "Organisations",
        "notified": "notified",
        "not_notified": "not notified yet",
        "acknowledged_at": "acknowledged at",
        "not_acknowledged": "not acknowledged",
        "resolved_at": "Resolved at",
        "resolved_by": "by",
        "acting_for": "You are acting for",
        "actions": "What are you doing about it?",
        "note": "Note (optional)",
        "note_hint": "Up to 2000 characters. The note is passed on to the organisations involved.",
        "acknowledge": "Acknowledge",
        "resolve": "Resolved – handled, no further action",
        "resolve_hint": "Only when the incident has been dealt with and nothing more is needed.",
        "add_note": "Send the note only",
        "done_acknowledge": "Recorded: you acknowledged this incident.",
        "done_resolve": "Recorded: the incident is marked as resolved.",
        "done_note": "Recorded: your note was added.",
        "done_later": "The status below may take a few minutes to catch up.",
        "review": "Review the classification",
        "review_intro": "The automatic classifier is not sure about this report. Read it and "
        "choose the right severity and kind. A higher severity notifies at once the "
        "organisations it calls for; a lower one does not take back mails already sent.",
        "classifier": "The classifier decided",
        "reasons": "Reasons",
        "no_reasons": "(none)",
        "flagged": "The classifier asked for a person to check.",
        "withheld": "Only the learned model rates it this high (the rules said {rules}). Not yet "
        "told: {tiers}. Keeping the severity and pressing Save confirms it and tells them at "
        "once.",
        "reviewed": "Reviewed by",
        "at": "at",
        "new_severity": "Right severity",
        "new_category": "Right kind of incident",
        "reclassify": "Save the classification",
        "reclassify_hint": "If the classification is right, leave it and press “Save the "
        "classification” to confirm it.",
        "done_reclassify": "Recorded: your classification was saved.",
        "err_review": "Choose a severity and a kind from the lists.",
        "unavailable": "We cannot record actions right now. Your action has NOT been recorded. "
        "Please try again in a few minutes.",
        "err_note_missing": "Write a note before pressing “Send the note only”.",
        "err_note_long": "The note is too long (at most 2000 characters).",
        "err_action": "Please press one of the buttons below.",
        "err_too_large": "What was sent is too large.",
        "open_again": "Open the incident page again",
        "contact": "Contact",
        "refused_invalid_title": "This link is not valid",
        "refused_invalid": "This link is wrong or was copied incompletely. Nothing was recorded. "
        "Open the link in the latest notification mail about the incident, or contact the Hanoi "
        "Department of Education and Training.",
        "refused_expired_title": "This link has expired",
        "refused_expired": "This link has expired. Nothing was recorded. Use the link in the "
        "latest notification mail about the incident, or contact the Hanoi Department of "
        "Education and Training.",
        "refused_bad_nonce_title": "The page was open too long",
        "refused_bad_nonce": "Nothing was recorded: the page was open too long, or the request "
        "did not come from the incident page. Open the page again and repeat.",
        "refused_cross_origin_title": "The request did not come from the incident page",
        "refused_cross_origin": "Nothing was recorded. Open the link in the mail and press the "
        "button on that page.",
        "refused_wrong_purpose_title": "This link is not for this page",
        "refused_wrong_purpose": "Nothing was recorded. Use the link from the notification "
        "mail, or contact the Hanoi Department of Education and Training.",
    },
}

SEVERITY_LABELS = {
    "vi": {
        "critical": "Rất nghiêm trọng",
        "high": "Nghiêm trọng",
        "medium": "Trung bình",
        "low": "Thấp",
    },
    "en": {"critical": "Critical", "high": "High", "medium": "Medium", "low": "Low"},
}

TIER_LABELS = {
    "vi": {
        Tier.school: "Ban giám hiệu nhà trường",
        Tier.district_office: "Phòng Giáo dục và Đào tạo",
        Tier.city_office: "Sở Giáo dục và Đào tạo Hà Nội",
        Tier.police: "Công an",
    },
    "en": {
        Tier.school: "School leadership",
        Tier.district_office: "District education office",
        Tier.city_office: "Hanoi Department of Education and Training",
        Tier.police: "Police",
    },
}

STATUS_LABELS = {
    "vi": {
        IncidentStatus.open: "Chưa đơn vị nào xác nhận tiếp nhận",
        IncidentStatus.acknowledged: "Đã được xác nhận tiếp nhận",
        IncidentStatus.resolved: "Đã xử lý xong",
    },
    "en": {
        IncidentStatus.open: "Open: nobody has acknowledged yet",
        IncidentStatus.acknowledged: "Acknowledged",
        IncidentStatus.resolved: "Resolved",
    },
}

# Problems the page can report back on a POST it did not act on (keys into TEXT).
PROBLEMS = (
    "unavailable",
    "err_note_missing",
    "err_note_long",
    "err_action",
    "err_too_large",
    "err_review",
)

PAGE_STYLE = (
    STYLE
    + """
body{overflow-wrap:anywhere}
dl{margin:0}dt{font-weight:600;margin-top:.6rem}dd{margin:0}
.report{white-space:pre-wrap;background:#f5f5f5;border-left:4px solid #90a4ae;padding:.5rem 1rem;
margin:.3rem 0 0}
.tiers{list-style:none;padding:0;margin:.3rem 0 0}.tiers li{padding:.4rem 0;
border-bottom:1px solid #e0e0e0}
.status{font-size:1.15rem;font-weight:600}
.actions button{margin-top:.8rem}
button.resolve{background:#2e7d32}button.resolve:hover{background:#1b5e20}
button.plain{background:#fff;color:#1565c0;border:2px solid #1565c0}
button.plain:hover{background:#e3f2fd}
.lang{text-align:right;margin:0}
.review{background:#fff4e5;border-left:4px solid #e67e22;padding:.2rem 1rem 1rem;margin-top:1rem}
.reasons{margin:.3rem 0 0;padding-left:1.2rem}
"""
)


@dataclass(frozen=True)
class HelpContact:
    """Whom a recipient with a broken or expired link should ask (the city office)."""

    name: str
    email: str


def hanoi_time(moment: datetime, lang: str) -> str:
    local = moment.astimezone(HANOI_TZ)
    return f"{local:%d/%m/%Y %H:%M} ({TEXT[lang]['hanoi_time']})"


def _page(lang: str, title: str, body: str) -> str:
    other = "en" if lang == "vi" else "vi"
    # A query-only link keeps the token path, so it works behind a path prefix too.
    switch = (
        f'<p class="lang"><a href="?lang={other}" lang="{other}" hreflang="{other}">'
        f"{escape(TEXT[lang]['other_lang'])}</a></p>"
    )
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="same-origin">'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{escape(title)}</title><style>{PAGE_STYLE}</style></head>"
        f"<body><main>{switch}{body}</main></body></html>"
    )


def _summary(lang: str, incident_id: str, state: EscalationState | None, school: str) -> str:
    t = TEXT[lang]
    rows = [(t["incident_id"], f'<span id="incident-id">{escape(incident_id)}</span>')]
    incident = state.incident if state else None
    if state is not None:
        severity = state.severity or (incident.decision.severity if incident else None)
        category = state.category or (incident.decision.category if incident else None)
        if severity is not None:
            rows.append((t["severity"], escape(SEVERITY_LABELS[lang][severity.value])))
        if category is not None:
            rows.append((t["category"], escape(CATEGORY_LABELS[lang][category.value])))
    if incident is not None:
        rows.append((t["school"], escape(school)))
        rows.append((t["received"], escape(hanoi_time(incident.received_at, lang))))
    items = "".join(f"<dt>{escape(label)}</dt><dd>{value}</dd>" for label, value in rows)
    report = ""
    if incident is not None:
        report = (
            f"<dt>{escape(t['description'])}</dt>"
            f'<dd><p class="report" id="report">{escape(incident.report.description)}</p></dd>'
        )
    return f"<h2>{escape(t['summary'])}</h2><dl>{items}{report}</dl>{_later(lang, state)}"


def _later(lang: str, state: EscalationState | None) -> str:
    """Reports that joined the incident after the first: the count and the latest ones, each
    with its time and rating (never the reporter's contact: a link may be forwarded)."""
    if state is None or state.incident is None or state.report_count <= 1:
        return ""
    t = TEXT[lang]
    items = "".join(
        "<li>"
        f"<p>{escape(hanoi_time(later.received_at, lang))} · "
        f"{escape(SEVERITY_LABELS[lang][later.severity.value])} · "
        f"{escape(CATEGORY_LABELS[lang][later.category.value])}</p>"
        f'<p class="report">{escape(later.report.description)}</p>'
        "</li>"
        for later in reversed(state.later_reports)
    )
    return (
        f'<h2 id="later">{escape(t["later"])}</h2>'
        f'<p>{escape(t["report_count"])}: <strong id="report-count">{state.report_count}</strong>'
        f"</p><ol>{items}</ol>"
    )


def _status(lang: str, state: EscalationState | None) -> str:
    t = TEXT[lang]
    if state is None:
        return (
            f"<h2>{escape(t['status'])}</h2>"
            f'<p class="status" id="status" data-status="unknown">{escape(t["status_unknown"])}</p>'
        )
    status = state.status
    lines = []
    for tier in Tier:
        part = state.tiers.get(tier)
        if part is None:
            continue
        told = t["notified"] if part.notified_at_step is not None else t["not_notified"]
        if part.acknowledged is not None:
            ack = f"{t['acknowledged_at']} {hanoi_time(part.acknowledged.at, lang)}"
        else:
            ack = t["not_acknowledged"]
        lines.append(
            f'<li data-tier="{tier.value}"><strong>{escape(TIER_LABELS[lang][tier])}</strong>: '
            f"{escape(told)}; {escape(ack)}</li>"
        )
    resolved = ""
    if state.resolved is not None:
        by = TIER_LABELS[lang][state.resolved_tier] if state.resolved_tier else ""
        resolved = (
            f'<p id="resolved">{escape(t["resolved_at"])} '
            f"{escape(hanoi_time(state.resolved.at, lang))}"
            + (f" {escape(t['resolved_by'])} {escape(by)}" if by else "")
            + "</p>"
        )
    tiers = (
        f"<h3>{escape(t['organisations'])}</h3><ul class='tiers'>{''.join(lines)}</ul>"
        if lines
        else ""
    )
    return (
        f"<h2>{escape(t['status'])}</h2>"
        f'<p class="status" id="status" data-status="{status.value}">'
        f"{escape(STATUS_LABELS[lang][status])}</p>{resolved}{tiers}"
    )


def _options(labels: dict[str, str], values: list[str], chosen: str | None) -> str:
    return "".join(
        f'<option value="{v}"{" selected" if v == chosen else ""}>{escape(labels[v])}</option>'
        for v in values
    )


def _review(lang: str, action: str, nonce: str, state: EscalationState | None) -> str:
    """The triage form: what the classifier decided and why, and the two selects."""
    t = TEXT[lang]
    incident = state.incident if state else None
    decided = ""
    if incident is not None:
        decision = incident.decision
        reasons = "".join(f"<li>{escape(r)}</li>" for r in decision.reasons) or (
            f"<li>{escape(t['no_reasons'])}</li>"
        )
        flagged = f"<p>{escape(t['flagged'])}</p>" if decision.needs_review else ""
        view = decision.second_opinion
        if state is not None and state.withheld and view is not None and view.raised_from:
            held = t["withheld"].format(
                rules=SEVERITY_LABELS[lang][view.raised_from.value],
                tiers=", ".join(TIER_LABELS[lang][tier] for tier in state.withheld),
            )
            flagged += f'<p id="withheld">{escape(held)}</p>'
        decided = (
            f'<dl id="classifier"><dt>{escape(t["classifier"])}</dt><dd>'
            f'<span data-severity="{decision.severity.value}">'
            f"{escape(SEVERITY_LABELS[lang][decision.severity.value])}</span>, "
            f'<span data-category="{decision.category.value}">'
            f"{escape(CATEGORY_LABELS[lang][decision.category.value])}</span></dd>"
            f'<dt>{escape(t["reasons"])}</dt><dd><ul class="reasons" id="reasons">{reasons}'
            f"</ul></dd></dl>{flagged}"
        )
    reviewed = ""
    done = state.review if state else None
    if done is not None and done.reviewed_at is not None:
        tier = TIER_LABELS[lang][done.reviewed_tier] if done.reviewed_tier else ""
        reviewed = (
            f'<p id="reviewed">{escape(t["reviewed"])} {escape(tier)} '
            f"({escape(done.reviewed_by or '')}) {escape(t['at'])} "
            f"{escape(hanoi_time(done.reviewed_at, lang))}</p>"
        )
    severity = state.severity.value if state and state.severity else None
    category = state.category.value if state and state.category else None
    return f"""
<section class="review" id="review">
<h2>{escape(t["review"])}</h2>
<p>{escape(t["review_intro"])}</p>
{decided}{reviewed}
<form method="post" action="{action}" accept-charset="utf-8">
<input type="hidden" name="nonce" value="{escape(nonce, quote=True)}">
<label for="severity">{escape(t["new_severity"])}</label>
<select id="severity" name="severity" required>
{_options(SEVERITY_LABELS[lang], [s.value for s in Severity], severity)}</select>
<label for="category">{escape(t["new_category"])}</label>
<select id="category" name="category" required>
{_options(CATEGORY_LABELS[lang], [c.value for c in Category], category)}</select>
<button type="submit" name="action" value="reclassify" id="reclassify"
 aria-describedby="reclassify_hint">{escape(t["reclassify"])}</button>
<p class="hint" id="reclassify_hint">{escape(t["reclassify_hint"])}</p>
</form>
</section>"""


def render_action_page(
    lang: str,
    *,
    token: str,
    nonce: str,
    claims: LinkClaims,
    state: EscalationState | None,
    school_name: str | None = None,
    done: ActionKind | None = None,
    problem: str | None = None,
    note: str = "",
) -> str:
    """The incident, where it stands, and the buttons (with the triage form for a review
    link). ``problem`` is a key of PROBLEMS."""
    t = TEXT[lang]
    banner = ""
    if done is not None:
        banner = (
            f'<div class="ok" role="status" id="done" data-done="{done.value}">'
            f"<p>{escape(t[f'done_{done.value}'])}</p><p>{escape(t['done_later'])}</p></div>"
        )
    elif problem is not None:
        banner = (
            f'<div class="errors" role="alert" id="problem" data-problem="{problem}">'
            f"<p>{escape(t[problem])}</p></div>"
        )
    school_code = state.incident.school_code if state and state.incident else ""
    school = f"{school_name} ({school_code})" if school_name else school_code
    # Relative to /a/{token}: the form posts back to this same link, behind any path prefix.
    action = f"{escape(token, quote=True)}?lang={lang}"
    # Only a review link gets the triage form; an action link never shows it.
    review = _review(lang, action, nonce, state) if claims.purpose is LinkPurpose.review else ""
    body = f"""
<h1>{escape(t["title"])}</h1>
{banner}
{_summary(lang, claims.incident_id, state, school)}
{review}
{_status(lang, state)}
<h2>{escape(t["actions"])}</h2>
<p>{escape(t["acting_for"])}: <strong id="acting-for">{escape(TIER_LABELS[lang][claims.tier])}
</strong> ({escape(claims.recipient)})</p>
<form method="post" action="{action}" accept-charset="utf-8" class="actions">
<input type="hidden" name="nonce" value="{escape(nonce, quote=True)}">
<label for="note">{escape(t["note"])}</label>
<textarea id="note" name="note" maxlength="{MAX_NOTE_CHARS}" aria-describedby="note_hint">
{escape(note)}</textarea>
<p class="hint" id="note_hint">{escape(t["note_hint"])}</p>
<button type="submit" name="action" value="acknowledge" id="acknowledge">
{escape(t["acknowledge"])}</button>
<button type="submit" name="action" value="resolve" id="resolve" class="resolve"
 aria-describedby="resolve_hint">{escape(t["resolve"])}</button>
<p class="hint" id="resolve_hint">{escape(t["resolve_hint"])}</p>
<button type="submit" name="action" value="note" id="add-note" class="plain">
{escape(t["add_note"])}</button>
</form>"""
    return _page(lang, t["title"], body)


def render_refusal(
    lang: str,
    reason: str,
    *,
    retry_href: str | None = None,
    help_contact: HelpContact | None = None,
) -> str:
    """Why the link did nothing, and what to do instead. ``retry_href`` only for a link that is
    itself valid (a stale or foreign form), never to echo back a token that failed."""
    t = TEXT[lang]
    title = t[f"refused_{reason}_title"]
    retry = (
        f'<p><a href="{escape(retry_href, quote=True)}">{escape(t["open_again"])}</a></p>'
        if retry_href
        else ""
    )
    contact = ""
    if help_contact is not None:
        email = escape(help_contact.email, quote=True)
        contact = (
            f"<p>{escape(t['contact'])}: {escape(help_contact.name)}, "
            f'<a href="mailto:{email}">{escape(help_contact.email)}</a></p>'
        )
    body = f"""
<h1>{escape(title)}</h1>
<div class="errors" role="alert" id="refused" data-reason="{escape(reason, quote=True)}">
<p>{escape(t[f"refused_{reason}"])}</p></div>
{retry}
{contact}"""
    return _page(lang, title, body)
