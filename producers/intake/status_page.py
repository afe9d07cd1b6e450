"""The reporter's status page (Vietnamese by default, English with ?lang=en): type a tracking
code, see where the report stands, add information to the same incident. No JavaScript.

It shows the status and when it last changed, never who was told, what others reported, the
severity or the incident id: whoever holds the code (a reporter, or someone who saw it over
their shoulder) learns only that the report is being handled.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode

from producers.intake.action_page import hanoi_time
from producers.intake.form import TEXT as FORM_TEXT
from producers.intake.form import _page, _with_phone_links
from producers.intake.incidents import CodeStatus, ReportStatus

TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "title": "Tra cứu báo cáo",
        "intro": "Nhập mã theo dõi bạn nhận được khi gửi báo cáo để xem tình trạng xử lý.",
        "code": "Mã theo dõi",
        "code_hint": "Mã có dạng ESC-XXXX-XXXX.",
        "look_up": "Xem tình trạng",
        "status": "Tình trạng",
        "updated": "Cập nhật lúc",
        "status_received": "Đã tiếp nhận",
        "explain_received": "Báo cáo đã được lưu và đang được chuyển đến các cơ quan có "
        "trách nhiệm.",
        "status_under_review": "Đang xem xét",
        "explain_under_review": "Cán bộ tiếp nhận đang xem xét báo cáo để chuyển đúng nơi.",
        "status_acknowledged": "Đã có cơ quan nhận xử lý",
        "explain_acknowledged": "Cơ quan có trách nhiệm đã xác nhận tiếp nhận và đang xử lý.",
        "status_resolved": "Đã xử lý xong",
        "explain_resolved": "Cơ quan có trách nhiệm cho biết sự việc đã được xử lý.",
        "add": "Bổ sung thông tin",
        "add_intro": "Nếu bạn biết thêm điều gì (tin nhắn mới, đường dẫn, người liên quan), "
        "hãy gửi tại đây. Thông tin được gắn vào cùng sự việc.",
        "description": "Thông tin bổ sung",
        "evidence": "Đường dẫn bằng chứng (không bắt buộc)",
        "evidence_hint": "Ví dụ đường dẫn đến bài đăng, nhóm chat hoặc ảnh chụp đã tải lên.",
        "send": "Gửi thông tin bổ sung",
        "unknown": "Không tìm thấy báo cáo nào có mã này. Hãy kiểm tra lại mã (báo cáo vừa "
        "gửi có thể cần vài giây để hiện ra).",
        "limited": "Bạn đã tra cứu quá nhiều lần. Vui lòng thử lại sau {seconds} giây.",
        "cross_site": "Nội dung này được gửi từ một trang web khác nên chưa được lưu. Hãy mở "
        "trang theo dõi báo cáo và gửi lại từ đó.",
        "not_ready": "Hệ thống đang tải thông tin tình trạng. Vui lòng thử lại sau ít phút.",
        "unavailable": "Hệ thống tạm thời không lưu được thông tin. Thông tin bổ sung CHƯA được "
        "gửi. Vui lòng thử lại sau ít phút hoặc gọi 111.",
        "too_large": "Nội dung quá dài.",
        "added": "Đã nhận thông tin bổ sung",
        "added_intro": "Thông tin đã được gắn vào cùng sự việc. Mã theo dõi của phần bổ sung:",
        "back": "Quay lại trang tình trạng",
        "other_code": "Tra cứu mã khác",
    },
    "en": {
        "title": "Check a report",
        "intro": "Enter the tracking code you got when you sent your report to see where it "
        "stands.",
        "code": "Tracking code",
        "code_hint": "The code looks like ESC-XXXX-XXXX.",
        "look_up": "Check status",
        "status": "Status",
        "updated": "Last updated",
        "status_received": "Received",
        "explain_received": "Your report is stored and is being passed to the authorities "
        "responsible.",
        "status_under_review": "Under review",
        "explain_under_review": "An intake officer is reviewing the report to send it to the "
        "right place.",
        "status_acknowledged": "Taken in hand",
        "explain_acknowledged": "An authority responsible has acknowledged the report and is "
        "dealing with it.",
        "status_resolved": "Resolved",
        "explain_resolved": "The authorities responsible say the incident has been dealt with.",
        "add": "Add information",
        "add_intro": "If you know more (new messages, links, who is involved), send it here. "
        "It is added to the same incident.",
        "description": "What else should we know?",
        "evidence": "Evidence link (optional)",
        "evidence_hint": "For example a link to the post, the chat group or an uploaded "
        "screenshot.",
        "send": "Send the information",
        "unknown": "No report with this code was found. Please check the code (a report sent "
        "moments ago may take a few seconds to appear).",
        "limited": "Too many lookups from your connection. Please try again in {seconds} seconds.",
        "cross_site": "This was sent from another website, so nothing was stored. Open the "
        "report's status page and send it from there.",
        "not_ready": "Status information is still loading. Please try again in a minute.",
        "unavailable": "We cannot store information right now. It has NOT been sent. Please "
        "try again in a few minutes or call 111.",
        "too_large": "The text is too long.",
        "added": "Information added",
        "added_intro": "It has been added to the same incident. Tracking code of this addition:",
        "back": "Back to the status page",
        "other_code": "Check another code",
    },
}


def status_url(lang: str, code: str | None = None) -> str:
    query = {"code": code, "lang": lang} if code else {"lang": lang}
    return f"/report/status?{urlencode(query)}"


def _switch(lang: str, code: str | None) -> str:
    other = "en" if lang == "vi" else "vi"
    href = escape(status_url(other, code), quote=True)
    return (
        f'<p><a href="{href}" lang="{other}" hreflang="{other}">'
        f"{escape(FORM_TEXT[lang]['other_lang'])}</a></p>"
    )


def _problem(message: str) -> str:
    return (
        '<div class="errors" role="alert" tabindex="-1" id="problems">'
        f"<p>{_with_phone_links(message)}</p></div>"
    )


def _code_form(lang: str, typed: str) -> str:
    t = TEXT[lang]
    return f"""
<form method="get" action="/report/status" accept-charset="utf-8">
<input type="hidden" name="lang" value="{lang}">
<label for="code">{escape(t["code"])}</label>
<input type="text" id="code" name="code" required maxlength="64" autocomplete="off"
 autocapitalize="characters" spellcheck="false" value="{escape(typed, quote=True)}"
 placeholder="ESC-XXXX-XXXX" aria-describedby="code_hint">
<p class="hint" id="code_hint">{escape(t["code_hint"])}</p>
<button type="submit">{escape(t["look_up"])}</button>
</form>"""


def render_lookup(
    lang: str, typed: str = "", problem: str | None = None, retry_after: int = 0
) -> str:
    """The page to type a code on; ``problem``: unknown, limited or not_ready.

    ``typed`` is shown back as given (escaped), never a normalised code: a miss must not hint at
    which spelling would have matched.
    """
    t = TEXT[lang]
    shown = ""
    if problem is not None:
        shown = _problem(t[problem].format(seconds=retry_after))
    body = f"""
{_switch(lang, typed or None)}
<h1>{escape(t["title"])}</h1>
<p>{escape(t["intro"])}</p>
{shown}
{_code_form(lang, typed)}"""
    return _page(lang, body, title=t["title"], private=True)


def render_status(
    lang: str,
    found: CodeStatus,
    values: dict[str, str] | None = None,
    errors: list[str] | None = None,
    problem: str | None = None,
) -> str:
    """Where the report stands, and the form to add information.

    ``errors``: validation problems of a posted addition (shown like the report form's);
    ``problem``: unavailable or too_large.
    """
    t = TEXT[lang]
    f = FORM_TEXT[lang]
    v = values or {}

    def val(name: str) -> str:
        return escape(v.get(name, ""), quote=True)

    status: ReportStatus = found.status
    shown = ""
    if problem is not None:
        shown = _problem(t[problem])
    elif errors:
        items = "".join(f"<li>{escape(e)}</li>" for e in errors)
        shown = (
            '<div class="errors" role="alert" tabindex="-1" id="problems">'
            f"<p>{escape(f['fix'])}</p><ul>{items}</ul></div>"
        )
    checked = " checked" if v.get("immediate_danger") else ""
    req = f'<span class="req">({escape(f["required"])})</span>'
    code = escape(found.tracking_code, quote=True)
    body = f"""
{_switch(lang, found.tracking_code)}
<h1>{escape(t["title"])}</h1>
<div class="ok" role="status" id="status" data-status="{status.value}">
<p>{escape(t["code"])}:
 <span class="code" id="tracking-code">{escape(found.tracking_code)}</span></p>
<p>{escape(t["status"])}:
 <strong id="status-label">{escape(t[f"status_{status.value}"])}</strong></p>
<p>{escape(t[f"explain_{status.value}"])}</p>
<p>{escape(t["updated"])}: {escape(hanoi_time(found.updated_at, lang))}</p>
</div>
<p class="note">{_with_phone_links(f["danger_note"])}</p>
<h2>{escape(t["add"])}</h2>
<p>{escape(t["add_intro"])}</p>
{shown}
<form method="post" action="/report/status?lang={lang}" accept-charset="utf-8">
<input type="hidden" name="code" value="{code}">
<label for="description">{escape(t["description"])} {req}</label>
<textarea id="description" name="description" required maxlength="10000">
{val("description")}</textarea>
<label for="evidence_url">{escape(t["evidence"])}</label>
<input type="url" id="evidence_url" name="evidence_url" maxlength="2000" autocomplete="off"
 value="{val("evidence_url")}" aria-describedby="evidence_hint">
<p class="hint" id="evidence_hint">{escape(t["evidence_hint"])}</p>
<label class="check"><input type="checkbox" name="immediate_danger" value="1"{checked}>
 <span>{escape(f["danger"])}</span></label>
<fieldset><legend>{escape(f["contact"])}</legend>
<label for="contact_name">{escape(f["name"])}</label>
<input type="text" id="contact_name" name="contact_name" maxlength="200" autocomplete="name"
 value="{val("contact_name")}">
<label for="contact_phone">{escape(f["phone"])}</label>
<input type="tel" id="contact_phone" name="contact_phone" maxlength="40" autocomplete="tel"
 value="{val("contact_phone")}">
<label for="contact_email">{escape(f["email"])}</label>
<input type="email" id="contact_email" name="contact_email" maxlength="254" autocomplete="email"
 value="{val("contact_email")}">
</fieldset>
<button type="submit">{escape(t["send"])}</button>
</form>
<p><a href="{escape(status_url(lang), quote=True)}">{escape(t["other_code"])}</a></p>"""
    return _page(lang, body, title=t["title"], private=True)


def render_added(lang: str, code: str, new_code: str, immediate_danger: bool = False) -> str:
    """Thanks for an addition: its own tracking code, and the way back to the status."""
    t = TEXT[lang]
    f = FORM_TEXT[lang]
    danger = (
        f'<p class="note" role="alert">{_with_phone_links(f["danger_again"])}</p>'
        if immediate_danger
        else ""
    )
    body = f"""
<h1>{escape(t["added"])}</h1>
{danger}
<div class="ok" role="status"><p>{escape(t["added_intro"])}</p>
<p class="code" id="tracking-code">{escape(new_code)}</p><p>{escape(f["keep"])}</p></div>
<p><a id="status-link" href="{escape(status_url(lang, code), quote=True)}">
{escape(t["back"])}</a></p>"""
    return _page(lang, body, title=t["added"], private=True)
