"""The bilingual web form (Vietnamese by default, English with ?lang=en). No JavaScript needed."""

from __future__ import annotations

from html import escape

from schemas.common import Category, ReporterRole

TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "title": "Báo cáo sự việc mất an toàn trên mạng",
        "intro": "Nếu bạn thấy điều bất thường khi học trực tuyến (người lạ vào lớp, lộ mật khẩu "
        "lớp học, bắt nạt, dụ dỗ, đe dọa, lừa đảo), hãy báo ngay. Có thể gửi ẩn danh.",
        "danger_note": "Nếu một em đang gặp nguy hiểm ngay lúc này, hãy gọi 113 (Công an) "
        "hoặc 111 (Tổng đài bảo vệ trẻ em) trước.",
        "school_code": "Mã trường",
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
    },
    "en": {
        "title": "Report an online safety incident",
        "intro": "If you notice something wrong during online learning (strangers in a class, "
        "leaked class passwords, bullying, grooming, threats, scams), report it now. "
        "You may stay anonymous.",
        "danger_note": "If a child is in danger right now, call 113 (police) or 111 "
        "(child protection hotline) first.",
        "school_code": "School code",
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
input[type=text],input[type=email],input[type=tel],select,textarea{width:100%;padding:.5rem;
font-size:1rem;box-sizing:border-box}
textarea{min-height:9rem}.note{background:#fff4e5;border-left:4px solid #e67e22;padding:.5rem 1rem}
.errors{background:#fdecea;border-left:4px solid #c0392b;padding:.5rem 1rem}
.ok{background:#e8f5e9;border-left:4px solid #2e7d32;padding:.5rem 1rem}
button{margin-top:1.5rem;padding:.75rem 1.5rem;font-size:1rem}
fieldset{margin-top:1rem}.code{font-size:1.6rem;font-family:monospace}
"""


def pick_lang(lang: str | None) -> str:
    return "en" if (lang or "").lower().startswith("en") else "vi"


def _page(lang: str, body: str) -> str:
    t = TEXT[lang]
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(t['title'])}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def render_form(
    lang: str,
    values: dict[str, str] | None = None,
    errors: list[str] | None = None,
    unavailable: bool = False,
) -> str:
    t = TEXT[lang]
    v = values or {}
    other = "en" if lang == "vi" else "vi"

    def val(name: str) -> str:
        return escape(v.get(name, ""), quote=True)

    role_opts = "".join(
        f'<option value="{r.value}"{" selected" if v.get("reporter_role") == r.value else ""}>'
        f"{escape(ROLE_LABELS[lang][r.value])}</option>"
        for r in ReporterRole
    )
    cat_opts = f'<option value="">{escape(t["unknown"])}</option>' + "".join(
        f'<option value="{c.value}"{" selected" if v.get("category_hint") == c.value else ""}>'
        f"{escape(CATEGORY_LABELS[lang][c.value])}</option>"
        for c in Category
    )
    problems = ""
    if unavailable:
        problems = f'<div class="errors" role="alert"><p>{escape(t["unavailable"])}</p></div>'
    elif errors:
        items = "".join(f"<li>{escape(e)}</li>" for e in errors)
        problems = (
            f'<div class="errors" role="alert"><p>{escape(t["fix"])}</p><ul>{items}</ul></div>'
        )
    checked = " checked" if v.get("immediate_danger") else ""
    body = f"""
<p><a href="/report?lang={other}">{escape(t["other_lang"])}</a></p>
<h1>{escape(t["title"])}</h1>
<p>{escape(t["intro"])}</p>
<p class="note">{escape(t["danger_note"])}</p>
{problems}
<form method="post" action="/report?lang={lang}" accept-charset="utf-8">
<label for="school_code">{escape(t["school_code"])}</label>
<input type="text" id="school_code" name="school_code" required maxlength="40"
 value="{val("school_code")}" placeholder="HN-BD-THCS-001">
<label for="reporter_role">{escape(t["role"])}</label>
<select id="reporter_role" name="reporter_role">{role_opts}</select>
<label for="description">{escape(t["description"])}</label>
<textarea id="description" name="description" required maxlength="10000">
{val("description")}</textarea>
<label><input type="checkbox" name="immediate_danger" value="1"{checked}>
 {escape(t["danger"])}</label>
<label for="category_hint">{escape(t["category"])}</label>
<select id="category_hint" name="category_hint">{cat_opts}</select>
<fieldset><legend>{escape(t["contact"])}</legend>
<label for="contact_name">{escape(t["name"])}</label>
<input type="text" id="contact_name" name="contact_name" maxlength="200"
 value="{val("contact_name")}">
<label for="contact_phone">{escape(t["phone"])}</label>
<input type="tel" id="contact_phone" name="contact_phone" maxlength="40"
 value="{val("contact_phone")}">
<label for="contact_email">{escape(t["email"])}</label>
<input type="email" id="contact_email" name="contact_email" maxlength="254"
 value="{val("contact_email")}">
</fieldset>
<button type="submit">{escape(t["submit"])}</button>
</form>"""
    return _page(lang, body)


def render_accepted(lang: str, tracking_code: str) -> str:
    t = TEXT[lang]
    body = f"""
<h1>{escape(t["accepted"])}</h1>
<div class="ok" role="status"><p>{escape(t["tracking"])}:</p>
<p class="code" id="tracking-code">{escape(tracking_code)}</p><p>{escape(t["keep"])}</p></div>
<p><a href="/report?lang={lang}">{escape(t["again"])}</a></p>"""
    return _page(lang, body)
