"""The bilingual web form (Vietnamese by default, English with ?lang=en). No JavaScript needed:
a script only adds school suggestions as one types."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from urllib.parse import urlencode

from pydantic import ValidationError

from producers.intake.form_guard import FIELD as FORM_TOKEN_FIELD
from producers.intake.schools import SchoolMatch
from schemas.common import Category, ReporterRole

TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "title": "Báo cáo sự việc mất an toàn trên mạng",
        "intro": "Nếu bạn thấy điều bất thường khi học trực tuyến (người lạ vào lớp, lộ mật khẩu "
        "lớp học, bắt nạt, dụ dỗ, đe dọa, lừa đảo), hãy báo ngay. Có thể gửi ẩn danh.",
        "danger_note": "Nếu một em đang gặp nguy hiểm ngay lúc này, hãy gọi 113 (Công an) "
        "hoặc 111 (Tổng đài bảo vệ trẻ em) trước.",
        "school_code": "Trường",
        "role": "Bạn là",
        "description": "Chuyện gì đã xảy ra?",
        "danger": "Có em đang gặp nguy hiểm ngay lúc này",
        "category": "Loại sự việc (nếu biết)",
        "unknown": "Không rõ",
        "contact": "Liên hệ của bạn (không bắt buộc; trường học sẽ không thấy thông tin này)",
        "name": "Họ tên",
        "phone": "Điện thoại",
        "email": "Email",
        "submit": "Gửi báo cáo",
        "other_lang": "English",
        "accepted": "Đã tiếp nhận báo cáo",
        "tracking": "Mã theo dõi của bạn",
        "keep": "Hãy lưu mã này để hỏi về tiến độ xử lý.",
        "fix": "Vui lòng sửa các mục sau:",
        "unavailable": "Hệ thống tạm thời không lưu được báo cáo. Báo cáo CHƯA được gửi. "
        "Vui lòng thử lại sau ít phút hoặc gọi 111.",
        "again": "Gửi báo cáo khác",
        "choose": "— Chọn —",
        "school_hint": "Tên trường, có dấu hay không dấu đều được, nên kèm quận/huyện (ví dụ "
        "THCS Phan Chu Trinh Ba Đình); hoặc mã trường trong thông báo của nhà trường "
        "(HN-BD-THCS-001).",
        "pick_school": "Bạn muốn nói trường nào? Chọn một trường, hoặc sửa tên ở trên:",
        "pick_error": "có nhiều trường trùng tên; hãy chọn một trường trong danh sách",
        "unknown_school_note": "Trường (người báo tự ghi)",
        "required": "bắt buộc",
        "danger_again": "Bạn đã đánh dấu có em đang gặp nguy hiểm: hãy gọi ngay 113 hoặc 111.",
        "err_missing": "cần điền mục này",
        "err_short": "quá ngắn, hãy viết rõ hơn",
        "err_long": "quá dài",
        "err_format": "không đúng định dạng",
        "err_choice": "hãy chọn một mục trong danh sách",
        "err_other": "không hợp lệ",
        "too_large": "Nội dung gửi quá dài.",
        "cross_site": "Biểu mẫu này được gửi từ một trang web khác nên chưa được lưu. Nếu bạn "
        "muốn báo cáo, hãy kiểm tra nội dung dưới đây rồi bấm Gửi.",
        "resend": "Biểu mẫu đã hết hạn hoặc không hợp lệ nên báo cáo chưa được lưu. Nội dung "
        "bạn viết vẫn còn dưới đây: hãy kiểm tra rồi bấm Gửi lại.",
        "too_many": "Có quá nhiều báo cáo được gửi từ địa chỉ này trong ít phút. Nội dung của "
        "bạn vẫn còn dưới đây: hãy đợi một phút rồi bấm Gửi lại. Nếu có trẻ đang gặp nguy "
        "hiểm, hãy gọi 113 ngay.",
        "sent_already": "Biểu mẫu này đã được gửi (mã theo dõi {code}). Nếu đây là một báo cáo "
        "khác, hãy bấm Gửi lần nữa.",
        "err_words": "hãy mô tả sự việc bằng lời (chữ hoặc số, không chỉ biểu tượng cảm xúc)",
        "err_checkbox": "hãy đánh dấu hoặc bỏ đánh dấu ô này",
        "field_school_code": "Trường",
        "field_description": "Chuyện gì đã xảy ra?",
        "field_reporter_role": "Bạn là",
        "field_category_hint": "Loại sự việc",
        "field_contact": "Liên hệ của bạn",
        "field_evidence_urls": "Đường dẫn bằng chứng",
        "follow": "Xem tiến độ xử lý hoặc bổ sung thông tin",
    },
    "en": {
        "title": "Report an online safety incident",
        "intro": "If you notice something wrong during online learning (strangers in a class, "
        "leaked class passwords, bullying, grooming, threats, scams), report it now. "
        "You may stay anonymous.",
        "danger_note": "If a child is in danger right now, call 113 (police) or 111 "
        "(child protection hotline) first.",
        "school_code": "School",
        "role": "You are",
        "description": "What happened?",
        "danger": "A child is in immediate danger",
        "category": "Kind of incident (if you know)",
        "unknown": "Not sure",
        "contact": "Your contact (optional; the school will not see it)",
        "name": "Name",
        "phone": "Phone",
        "email": "Email",
        "submit": "Send report",
        "other_lang": "Tiếng Việt",
        "accepted": "Report received",
        "tracking": "Your tracking code",
        "keep": "Keep this code to ask about progress.",
        "fix": "Please correct the following:",
        "unavailable": "We cannot store reports right now. Your report has NOT been sent. "
        "Please try again in a few minutes or call 111.",
        "again": "Send another report",
        "choose": "— Choose —",
        "school_hint": "The school's name, with or without accents, best with its district "
        "(e.g. Phan Chu Trinh, Ba Dinh); or the code from a school notice (HN-BD-THCS-001).",
        "pick_school": "Which school do you mean? Pick one, or change the name above:",
        "pick_error": "several schools have that name; please pick one from the list",
        "unknown_school_note": "School (as the reporter wrote it)",
        "required": "required",
        "danger_again": "You said a child is in danger: call 113 or 111 now.",
        "err_missing": "please fill this in",
        "err_short": "too short, please say a little more",
        "err_long": "too long",
        "err_format": "not in the expected format",
        "err_choice": "please pick one of the listed options",
        "err_other": "not valid",
        "too_large": "What was sent is too long.",
        "cross_site": "This form was sent from another website, so nothing was stored. If you "
        "meant to report, check what is below and press Send.",
        "resend": "The form had expired or was not valid, so nothing was stored. What you wrote "
        "is still below: check it and press Send again.",
        "too_many": "Too many reports were sent from this address in the last few minutes. What "
        "you wrote is still below: wait a minute and press Send again. If a child is in danger "
        "now, call 113.",
        "sent_already": "This form was sent already (tracking code {code}). If this is another "
        "report, press Send once more.",
        "err_words": "please describe what happened in words (letters or numbers, not only emoji)",
        "err_checkbox": "please tick or untick this box",
        "field_school_code": "School",
        "field_description": "What happened?",
        "field_reporter_role": "You are",
        "field_category_hint": "Kind of incident",
        "field_contact": "Your contact",
        "field_evidence_urls": "Evidence link",
        "follow": "See progress or add information",
    },
}

ROLE_LABELS = {
    "vi": {
        "student": "Học sinh",
        "parent": "Phụ huynh",
        "teacher": "Giáo viên",
        "school_staff": "Cán bộ nhà trường",
        "other": "Khác",
        "anonymous": "Ẩn danh",
    },
    "en": {
        "student": "Student",
        "parent": "Parent",
        "teacher": "Teacher",
        "school_staff": "School staff",
        "other": "Other",
        "anonymous": "Anonymous",
    },
}

CATEGORY_LABELS = {
    "vi": {
        "sexual_exploitation": "Xâm hại, dụ dỗ tình dục",
        "threat_of_violence": "Đe dọa bạo lực",
        "self_harm": "Tự hại, tự tử",
        "cyberbullying": "Bắt nạt trên mạng",
        "privacy_violation": "Lộ thông tin cá nhân",
        "account_compromise": "Bị chiếm tài khoản",
        "fraud": "Lừa đảo",
        "intrusion": "Người lạ vào phá lớp học",
        "credential_leak": "Lộ mã, mật khẩu lớp học",
        "harmful_content": "Nội dung độc hại",
        "other": "Khác",
    },
    "en": {c.value: c.value.replace("_", " ").capitalize() for c in Category},
}

STYLE = """
body{font-family:system-ui,sans-serif;max-width:42rem;margin:1rem auto;padding:0 1rem;
line-height:1.5;color:#1b1b1b}
label{display:block;margin-top:1rem;font-weight:600}
input[type=text],input[type=email],input[type=tel],input[type=url],select,textarea{width:100%;
padding:.5rem;
font-size:1rem;box-sizing:border-box;font-family:inherit}
.check{display:flex;gap:.6rem;align-items:flex-start}.check input{width:1.4rem;height:1.4rem;
margin-top:.15rem;flex:none}.hint{font-size:.9rem;color:#555;margin:.2rem 0 0}
.req{color:#c0392b;font-weight:400;font-size:.9rem}
textarea{min-height:9rem}.note{background:#fff4e5;border-left:4px solid #e67e22;padding:.5rem 1rem}
.errors{background:#fdecea;border-left:4px solid #c0392b;padding:.5rem 1rem}
.ok{background:#e8f5e9;border-left:4px solid #2e7d32;padding:.5rem 1rem}
button{margin-top:1.5rem;padding:.8rem 1.5rem;font-size:1.1rem;background:#1565c0;color:#fff;
border:0;border-radius:.4rem;cursor:pointer;width:100%}button:hover{background:#0d47a1}
fieldset{margin-top:1rem}.code{font-size:1.6rem;font-family:monospace}
"""


def pick_lang(lang: str | None) -> str:
    return "en" if (lang or "").lower().startswith("en") else "vi"


def _page(lang: str, body: str, title: str | None = None, private: bool = False) -> str:
    """``private``: a page whose URL carries a tracking code, kept out of Referer headers and
    search engines."""
    t = TEXT[lang]
    meta = (
        '<meta name="referrer" content="same-origin">'
        '<meta name="robots" content="noindex, nofollow">'
        if private
        else ""
    )
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{meta}'
        f"<title>{escape(title or t['title'])}</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def _with_phone_links(text: str) -> str:
    """Escape, then make the emergency numbers tappable on a phone."""
    html = escape(text)
    for number in ("113", "111"):
        html = html.replace(number, f'<a href="tel:{number}">{number}</a>')
    return html


#: what a ticked checkbox sends (browsers send its value, "1" here, or "on" without one), and
#: what a script or an older page might send for an unticked one; anything else is refused
TICKED = frozenset({"1", "on", "true", "yes", "có"})
UNTICKED = frozenset({"", "0", "off", "false", "no", "không"})


def checkbox(value: str | None) -> bool | str:
    """A form checkbox as a bool; a value that is neither ticked nor unticked comes back as
    it is, for the report's validation to refuse (``immediate_danger=0`` was once read as
    ticked, because any non-empty text is true in Python)."""
    if value is None:
        return False
    folded = value.strip().lower()
    if folded in TICKED:
        return True
    if folded in UNTICKED:
        return False
    return value


def form_errors(exc: ValidationError, lang: str, labels: dict[str, str] | None = None) -> list[str]:
    """Validation problems in the reporter's language, naming fields as the form labels them
    (``labels``: field names a page labels otherwise than the report form)."""
    t = TEXT[lang]
    messages = []
    for err in exc.errors(include_input=False, include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        label = (labels or {}).get(field) or t.get(f"field_{field}", field)
        kind = err["type"]
        if kind == "missing":
            reason = t["err_missing"]
        elif kind in ("string_too_short", "too_short"):
            reason = t["err_short"]
        elif kind in ("string_too_long", "too_long"):
            reason = t["err_long"]
        elif kind == "enum":
            reason = t["err_choice"]
        elif kind == "description_without_words":
            reason = t["err_words"]
        elif kind in ("bool_parsing", "bool_type"):
            reason = t["err_checkbox"]
        elif kind in ("string_pattern_mismatch", "value_error") or kind.startswith("url_"):
            reason = t["err_format"]
        else:
            reason = t["err_other"]
        messages.append(f"{label.rstrip('?')}: {reason}")
    return messages


#: the form post as OpenAPI describes it (the page sends these; the server reads them as text)
FORM_BODY_SCHEMA = {
    "type": "object",
    "required": [FORM_TOKEN_FIELD, "school_code", "reporter_role", "description"],
    "properties": {
        FORM_TOKEN_FIELD: {
            "type": "string",
            "description": "The signed token of the form page (GET /report) this post comes from.",
        },
        "school_code": {"type": "string", "description": "A school's code or name."},
        "school_pick": {"type": "string", "description": "A code picked among same-named schools."},
        "reporter_role": {"type": "string", "enum": [r.value for r in ReporterRole]},
        "description": {"type": "string", "minLength": 5, "maxLength": 10_000},
        "immediate_danger": {"type": "string", "enum": ["1", "on", "0", ""]},
        "category_hint": {"type": "string", "enum": [c.value for c in Category]},
        "contact_name": {"type": "string", "maxLength": 200},
        "contact_phone": {"type": "string", "maxLength": 40},
        "contact_email": {"type": "string", "format": "email"},
    },
}


def render_form(
    lang: str,
    values: dict[str, str] | None = None,
    errors: list[str] | None = None,
    unavailable: bool = False,
    candidates: Sequence[SchoolMatch] = (),
    suggest: bool = False,
    token: str = "",
    notice: str | None = None,
) -> str:
    """``candidates``: schools the typed name could mean, offered as a choice (no script
    needed); ``suggest``: the field suggests schools as the reporter types (a small script
    asking ``/v1/schools``; without it the field still takes a name or a code); ``token``:
    the signed form token (``form_guard``) the post must carry; ``notice``: why the form came
    back although nothing in it was wrong."""
    t = TEXT[lang]
    v = values or {}
    other = "en" if lang == "vi" else "vi"

    def val(name: str) -> str:
        return escape(v.get(name, ""), quote=True)

    def selected(name: str, value: str) -> str:
        return " selected" if v.get(name) == value else ""

    role_opts = f'<option value="">{escape(t["choose"])}</option>' + "".join(
        f'<option value="{r.value}"{selected("reporter_role", r.value)}>'
        f"{escape(ROLE_LABELS[lang][r.value])}</option>"
        for r in ReporterRole
    )
    cat_opts = f'<option value="">{escape(t["unknown"])}</option>' + "".join(
        f'<option value="{c.value}"{selected("category_hint", c.value)}>'
        f"{escape(CATEGORY_LABELS[lang][c.value])}</option>"
        for c in Category
    )
    problems = ""
    if notice:
        problems = (
            '<div class="errors" role="alert" tabindex="-1" id="problems">'
            f"<p>{_with_phone_links(escape(notice))}</p></div>"
        )
    elif unavailable:
        problems = (
            '<div class="errors" role="alert" tabindex="-1" id="problems">'
            f"<p>{_with_phone_links(t['unavailable'])}</p></div>"
        )
    elif errors:
        items = "".join(f"<li>{escape(e)}</li>" for e in errors)
        problems = (
            '<div class="errors" role="alert" tabindex="-1" id="problems">'
            f"<p>{escape(t['fix'])}</p><ul>{items}</ul></div>"
        )
    checked = " checked" if checkbox(v.get("immediate_danger")) else ""
    picker = ""
    if candidates:
        options = "".join(
            f'<label class="check"><input type="radio" name="school_pick" '
            f'value="{escape(c.code, quote=True)}"> <span>{escape(c.name)} '
            f"({escape(c.district)})</span></label>"
            for c in candidates
        )
        picker = (
            f'<fieldset id="school-pick"><legend>{escape(t["pick_school"])}</legend>'
            f"{options}</fieldset>"
        )
    datalist = ""
    script = ""
    if suggest:
        datalist = ' list="school-suggestions"'
        picker += '<datalist id="school-suggestions"></datalist>'
        script = '<script src="/report/school-search.js" defer></script>'

    req = f'<span class="req">({escape(t["required"])})</span>'
    body = f"""
<p><a href="/report?lang={other}" lang="{other}" hreflang="{other}">
{escape(t["other_lang"])}</a></p>
<h1>{escape(t["title"])}</h1>
<p>{escape(t["intro"])}</p>
<p class="note">{_with_phone_links(t["danger_note"])}</p>
{problems}
<form method="post" action="/report?lang={lang}" accept-charset="utf-8">
<input type="hidden" name="{FORM_TOKEN_FIELD}" value="{escape(token, quote=True)}">
<label for="school_code">{escape(t["school_code"])} {req}</label>
<input type="text" id="school_code" name="school_code" required maxlength="200"
 value="{val("school_code")}" aria-describedby="school_hint" autocomplete="off"{datalist}>
<p class="hint" id="school_hint">{escape(t["school_hint"])}</p>{picker}
<label for="reporter_role">{escape(t["role"])}</label>
<select id="reporter_role" name="reporter_role">{role_opts}</select>
<label for="description">{escape(t["description"])} {req}</label>
<textarea id="description" name="description" required maxlength="10000">
{val("description")}</textarea>
<label class="check"><input type="checkbox" name="immediate_danger" value="1"{checked}>
 <span>{escape(t["danger"])}</span></label>
<label for="category_hint">{escape(t["category"])}</label>
<select id="category_hint" name="category_hint">{cat_opts}</select>
<fieldset><legend>{escape(t["contact"])}</legend>
<label for="contact_name">{escape(t["name"])}</label>
<input type="text" id="contact_name" name="contact_name" maxlength="200" autocomplete="name"
 value="{val("contact_name")}">
<label for="contact_phone">{escape(t["phone"])}</label>
<input type="tel" id="contact_phone" name="contact_phone" maxlength="40" autocomplete="tel"
 value="{val("contact_phone")}">
<label for="contact_email">{escape(t["email"])}</label>
<input type="email" id="contact_email" name="contact_email" maxlength="254" autocomplete="email"
 value="{val("contact_email")}">
</fieldset>
<button type="submit">{escape(t["submit"])}</button>
</form>{script}"""
    return _page(lang, body)


def status_href(lang: str, tracking_code: str) -> str:
    """The reporter's status page for a code (already escaped for an attribute)."""
    return escape(f"/report/status?{urlencode({'code': tracking_code, 'lang': lang})}", quote=True)


def render_accepted(lang: str, tracking_code: str, immediate_danger: bool = False) -> str:
    t = TEXT[lang]
    danger = (
        f'<p class="note" role="alert">{_with_phone_links(t["danger_again"])}</p>'
        if immediate_danger
        else ""
    )
    body = f"""
<h1>{escape(t["accepted"])}</h1>
{danger}
<div class="ok" role="status"><p>{escape(t["tracking"])}:</p>
<p class="code" id="tracking-code">{escape(tracking_code)}</p><p>{escape(t["keep"])}</p>
<p><a id="status-link" href="{status_href(lang, tracking_code)}">{escape(t["follow"])}</a></p></div>
<p><a href="/report?lang={lang}">{escape(t["again"])}</a></p>"""
    return _page(lang, body, private=True)


#: Suggestions for the school field: asks /v1/schools as the reporter types (after a pause),
#: offers "name (district)" entries, which the server resolves like any typed name.
SCHOOL_SEARCH_JS = """(function () {
  var input = document.getElementById("school_code");
  var list = document.getElementById("school-suggestions");
  if (!input || !list || !window.fetch) return;
  var timer = null, asked = "";
  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      var q = input.value.trim();
      if (q.length < 2 || q === asked) return;
      asked = q;
      fetch("/v1/schools?limit=8&q=" + encodeURIComponent(q))
        .then(function (r) { return r.ok ? r.json() : {schools: []}; })
        .then(function (body) {
          if (q !== asked) return;
          list.textContent = "";
          body.schools.forEach(function (s) {
            var option = document.createElement("option");
            option.value = s.name + " (" + s.district + ")";
            list.appendChild(option);
          });
        })
        .catch(function () {});
    }, 200);
  });
})();
"""
