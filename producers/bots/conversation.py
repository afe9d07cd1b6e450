"""The guided conversation of the chat bots, as a pure function of (state, message).

The bot asks what the web form asks: which school, what happened, whether a child is in danger
right now. A message that says a child is in danger is answered with the emergency numbers
before anything else, and files a report at once, with whatever is known, so that nothing
depends on the reporter finishing the conversation; what follows is added to the same
incident. The platform adapters (Telegram, ...) only turn their payloads into ``Incoming`` and
send the replies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from producers.intake.schools import UNKNOWN_SCHOOL, SchoolFinder, SchoolMatch, looks_like_code
from schemas.bots import ChatStep, Conversation
from schemas.reports import MAX_DESCRIPTION_CHARS, ReportIn, in_words
from schemas.text import fold

Lang = Literal["vi", "en"]

#: folded phrases that say a child is in danger now (or wants to die): answered at once
DANGER_PHRASES = (
    "nguy hiem",
    "cuu voi",
    "cuu em",
    "cuu con",
    "cuu toi",
    "khan cap",
    "ngay bay gio",
    "ngay luc nay",
    "dang bi danh",
    "muon chet",
    "tu tu",
    "sos",
    "danger",
    "emergency",
    "help me",
    "right now",
    "kill myself",
    "suicide",
)
#: the shortest text a report may have (schemas.reports.ReportIn)
MIN_TEXT = 5
YES = {"co", "yes", "y", "dung", "vang", "da", "phai", "1"}
NO = {"khong", "ko", "k", "no", "n", "chua", "0"}

TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "hello": "Chào bạn. Đây là kênh báo cáo sự việc mất an toàn trên mạng của học sinh "
        "(người lạ vào lớp học trực tuyến, lộ mật khẩu lớp, bắt nạt, dụ dỗ, đe dọa, lừa đảo). "
        "Bạn có thể giấu tên. Gửi /en for English.",
        "emergency": "Nếu có em đang gặp nguy hiểm ngay lúc này, hãy gọi ngay 113 (Công an) "
        "hoặc 111 (Tổng đài quốc gia bảo vệ trẻ em).",
        "ask_school": "Sự việc liên quan đến trường nào? Hãy gõ tên trường (có dấu hay không "
        "đều được), nên kèm quận/huyện, hoặc mã trường.",
        "pick_school": "Có nhiều trường trùng tên. Hãy gửi số của trường đúng, hoặc gõ lại tên:",
        "ask_what": "Chuyện gì đã xảy ra? Hãy kể ngắn gọn: ở đâu, khi nào, ai liên quan.",
        "too_short": "Bạn có thể kể rõ hơn một chút không?",
        "ask_danger": "Có em nào đang gặp nguy hiểm ngay lúc này không? Trả lời “có” hoặc “không”.",
        "yes_or_no": "Xin trả lời “có” hoặc “không”.",
        "filed": "Đã tiếp nhận báo cáo. Mã theo dõi của bạn: {code}. Hãy lưu mã này; "
        "xem tiến độ hoặc bổ sung thông tin tại {link}",
        "filed_now": "Chúng tôi đã ghi nhận ngay báo cáo khẩn của bạn (mã {code}) và báo cho "
        "những người có trách nhiệm. Nếu có thể, hãy trả lời thêm vài câu hỏi.",
        "added": "Đã bổ sung thông tin vào báo cáo {code}. Cảm ơn bạn.",
        "done": "Báo cáo của bạn (mã {code}) đã được tiếp nhận. Gửi /new để báo một sự việc "
        "khác, hoặc bổ sung thông tin tại {link}",
        "unknown_school": "Trường (người báo tự ghi)",
        "only_wrote": "Người báo chỉ nhắn",
        "not_stored": "Hệ thống tạm thời chưa lưu được báo cáo. Xin gửi lại tin nhắn sau ít "
        "phút, hoặc gọi 111.",
    },
    "en": {
        "hello": "Hello. This is where you can report online-safety incidents involving school "
        "students (strangers in an online class, leaked class passwords, bullying, grooming, "
        "threats, scams). You may stay anonymous. Gửi /vi để dùng tiếng Việt.",
        "emergency": "If a child is in danger right now, call 113 (police) or 111 (national "
        "child protection hotline) immediately.",
        "ask_school": "Which school is it about? Type the school's name (accents optional), "
        "best with its district, or its code.",
        "pick_school": "Several schools have that name. Send the number of the right one, or "
        "type the name again:",
        "ask_what": "What happened? Tell us briefly: where, when, who was involved.",
        "too_short": "Could you say a little more?",
        "ask_danger": "Is a child in danger right now? Answer yes or no.",
        "yes_or_no": "Please answer yes or no.",
        "filed": "Report received. Your tracking code: {code}. Keep it; see progress or add "
        "information at {link}",
        "filed_now": "We have filed your urgent report at once (code {code}) and alerted the "
        "people responsible. If you can, please answer a few more questions.",
        "added": "Your information was added to report {code}. Thank you.",
        "done": "Your report (code {code}) was received. Send /new to report something else, "
        "or add information at {link}",
        "unknown_school": "School (as the reporter wrote it)",
        "only_wrote": "The reporter only wrote",
        "not_stored": "We could not store the report just now. Please send your message again "
        "in a few minutes, or call 111.",
    },
}


@dataclass(frozen=True)
class Incoming:
    """One text message from a reporter, whatever the platform."""

    platform: str
    chat: str
    update_id: int
    text: str
    #: the language the platform says the user's app is set to, when it says
    language_hint: str | None = None


@dataclass
class Turn:
    """What one message leads to: the new state, the replies in order, a report to file.

    ``follow_up``: the report adds to the incident of the conversation's first report.
    ``emergency``: the first reply is the emergency numbers and must go out before anything
    is stored.
    """

    state: Conversation
    replies: list[str] = field(default_factory=list)
    report: ReportIn | None = None
    follow_up: bool = False
    emergency: bool = False


_DANGER = re.compile(r"\b(?:" + "|".join(map(re.escape, DANGER_PHRASES)) + r")\b")


def says_danger(text: str) -> bool:
    folded = " ".join(re.findall(r"[0-9a-z]+", fold(text).casefold()))
    return _DANGER.search(folded) is not None


def _words(text: str) -> set[str]:
    return set(re.findall(r"[0-9a-z]+", fold(text).casefold()))


_ENGLISH = {"the", "is", "my", "someone", "hello", "hi", "help", "class", "school", "child"}


def guess_lang(text: str, hint: str | None) -> Lang:
    """The platform's language setting when given; else English only for text without
    Vietnamese letters that reads as English. Vietnamese is the default."""
    if hint:
        return "en" if hint.lower().startswith("en") else "vi"
    if fold(text) == text and _words(text) & _ENGLISH:
        return "en"
    return "vi"


def _command(text: str) -> str | None:
    match = re.match(r"^/([a-z]+)(?:@\w+)?\s*$", text.strip().lower())
    return match.group(1) if match else None


def fresh(incoming: Incoming, now: datetime, lang: Lang) -> Conversation:
    return Conversation(platform=incoming.platform, chat=incoming.chat, lang=lang, updated_at=now)


def advance(
    state: Conversation | None, incoming: Incoming, schools: SchoolFinder, now: datetime
) -> Turn:
    """The next state and replies for one message; a message already handled changes nothing.

    Replies may hold ``{code}`` and ``{link}``: the tracking code and status page of the
    conversation's report, known only once the caller has stored it.
    """
    if state is not None and incoming.update_id <= state.last_update:
        return Turn(state)
    text = incoming.text.strip()
    command = _command(text)
    lang: Lang = state.lang if state is not None else guess_lang(text, incoming.language_hint)
    if command in ("en", "vi"):
        lang = "en" if command == "en" else "vi"
    restart = state is None or command in ("start", "new")
    if restart:
        current = fresh(incoming, now, lang)
    else:
        assert state is not None
        current = state.model_copy(update={"lang": lang})
    current = current.model_copy(update={"last_update": incoming.update_id, "updated_at": now})
    t = TEXT[lang]
    turn = Turn(current)

    if says_danger(text) and not current.danger:
        # The numbers first, before any question and before anything is stored.
        turn.emergency = True
        turn.replies.append(t["emergency"])
        current = current.model_copy(update={"danger": True})
        # Filed now with what is known (or added to the report already filed); the rest of
        # the conversation adds to it.
        turn.report = _report(current, description=text)
        turn.follow_up = current.report_id is not None
        turn.state = current
        turn.replies.append(t["added"] if turn.follow_up else t["filed_now"])
        if current.step is not ChatStep.done:
            turn.replies.append(_question(current, t))
        return turn

    if restart and command is not None:
        turn.replies += [t["hello"], t["emergency"], t["ask_school"]]
        return turn
    if restart:
        # A first message that is already the story: greet, keep it, ask for the school.
        turn.replies += [t["hello"]]
        if len(text) >= 20 and command is None:
            turn.state = turn.state.model_copy(update={"description": text})
        turn.replies.append(t["ask_school"])
        return turn
    if command in ("en", "vi"):
        turn.replies.append(_question(turn.state, t))
        return turn
    return _answer(turn, text, schools, t)


def _answer(turn: Turn, text: str, schools: SchoolFinder, t: dict[str, str]) -> Turn:
    state = turn.state
    step = state.step
    if step is ChatStep.done:
        turn.replies.append(t["done"])
        return turn
    if step is ChatStep.pick_school:
        chosen = text.strip().rstrip(".")
        if chosen.isdigit() and 1 <= int(chosen) <= len(state.school_choices):
            code = state.school_choices[int(chosen) - 1]
            turn.state = state.model_copy(
                update={"school_code": code, "school_choices": [], "step": _after_school(state)}
            )
            return _maybe_file(turn, t)
        if chosen.isdigit():  # a number that is not on the list: the list again
            offered = [schools.by_code(code) for code in state.school_choices]
            return _offer(turn, [m for m in offered if m is not None], t)
        step = ChatStep.school  # anything else is a new try at the name
    if step is ChatStep.school:
        if len(re.findall(r"\w", text)) < 3:
            turn.replies.append(t["ask_school"])
            return turn
        school, candidates = schools.resolve(text)
        if school is not None:
            update = {"school_code": school.code, "school_typed": None}
        elif candidates:
            return _offer(turn, candidates, t)
        elif looks_like_code(text):
            update = {"school_code": text.strip().upper(), "school_typed": None}
        else:
            update = {"school_code": UNKNOWN_SCHOOL, "school_typed": text[:200]}
        turn.state = state.model_copy(
            update={**update, "school_choices": [], "step": _after_school(state)}
        )
        return _maybe_file(turn, t)
    if step is ChatStep.what:
        if len(text) < 5:
            turn.replies.append(t["too_short"])
            return turn
        turn.state = state.model_copy(
            update={"description": text, "step": ChatStep.done if state.danger else ChatStep.danger}
        )
        return _maybe_file(turn, t)
    if step is ChatStep.danger:
        words = _words(text)
        if words & YES:
            turn.state = state.model_copy(update={"danger": True, "step": ChatStep.done})
            if not turn.emergency:
                turn.emergency = True
                turn.replies.insert(0, t["emergency"])
        elif words & NO:
            turn.state = state.model_copy(update={"step": ChatStep.done})
        else:
            turn.replies.append(t["yes_or_no"])
            return turn
        return _maybe_file(turn, t)
    return turn


def _offer(turn: Turn, candidates: list[SchoolMatch], t: dict[str, str]) -> Turn:
    choices = [c.code for c in candidates]
    turn.state = turn.state.model_copy(
        update={"step": ChatStep.pick_school, "school_choices": choices}
    )
    listing = "\n".join(f"{n}. {c.name} ({c.district})" for n, c in enumerate(candidates, 1))
    turn.replies.append(f"{t['pick_school']}\n{listing}")
    return turn


def _after_school(state: Conversation) -> ChatStep:
    if state.description is None:
        return ChatStep.what
    return ChatStep.done if state.danger else ChatStep.danger


def _maybe_file(turn: Turn, t: dict[str, str]) -> Turn:
    """Once every question is answered: the report (or the addition to the urgent one)."""
    state = turn.state
    if state.step is not ChatStep.done:
        turn.replies.append(_question(state, t))
        return turn
    turn.report = _report(state, state.description or "")
    turn.follow_up = state.report_id is not None
    turn.state = state.model_copy(update={"description": None})
    turn.replies.append(t["added"] if turn.follow_up else t["filed"])
    return turn


def _question(state: Conversation, t: dict[str, str]) -> str:
    if state.step is ChatStep.school or state.school_code is None:
        return t["ask_school"]
    if state.step is ChatStep.what:
        return t["ask_what"]
    if state.step is ChatStep.danger:
        return t["ask_danger"]
    return t["done"]


def _report(state: Conversation, description: str) -> ReportIn:
    """The report as the intake takes it from any channel. A chat message may be shorter
    than a report's text must be ("SOS"), only emoji, or longer: it is framed or cut, never
    refused."""
    t = TEXT[state.lang]
    text = description.strip()
    if len(text) < MIN_TEXT or not in_words(text):
        # "SOS", or only emoji: in a chat that is still a report, so say what was sent.
        text = f"{t['only_wrote']}: {text}"
    if state.school_typed:
        text = f"{text}\n\n{t['unknown_school']}: {state.school_typed}"
    text = text[:MAX_DESCRIPTION_CHARS]
    return ReportIn.model_validate(
        {
            "channel": state.platform,
            "reporter_role": "anonymous",
            "school_code": state.school_code or UNKNOWN_SCHOOL,
            "description": text,
            "immediate_danger": state.danger,
        }
    )
