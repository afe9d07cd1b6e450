"""The chat bots' conversation (producers/bots/conversation.py): pure, no platform, no broker."""

from __future__ import annotations

from itertools import count

import pytest

from producers.bots.conversation import TEXT, Incoming, Turn, advance, guess_lang, says_danger
from producers.intake.schools import UNKNOWN_SCHOOL, SchoolFinder
from schemas.bots import ChatStep, Conversation
from tests.fakes import T0
from tests.unit.test_schools import CITY

SCHOOLS = SchoolFinder(CITY)


class Chat:
    """One reporter's chat: sends messages, keeps the state as the bot's shell would."""

    def __init__(self, hint: str | None = None) -> None:
        self.state: Conversation | None = None
        self.ids = count(1)
        self.hint = hint

    def send(self, text: str) -> Turn:
        turn = advance(
            self.state, Incoming("telegram", "42", next(self.ids), text, self.hint), SCHOOLS, T0
        )
        state = turn.state
        if turn.report is not None and state.report_id is None:
            # what the shell does once the report is stored
            state = state.model_copy(update={"report_id": "r1", "tracking_code": "ESC-AAAA-BBBB"})
        self.state = state
        return turn


def test_the_questions_of_the_form_in_order_then_one_report() -> None:
    chat = Chat()
    first = chat.send("/start")
    assert first.replies == [TEXT["vi"]["hello"], TEXT["vi"]["emergency"], TEXT["vi"]["ask_school"]]
    assert chat.send("phan chu trinh").replies == [TEXT["vi"]["ask_what"]]
    assert chat.send("Người lạ vào lớp học trực tuyến của con").replies == [
        TEXT["vi"]["ask_danger"]
    ]
    turn = chat.send("không")
    assert turn.replies == [TEXT["vi"]["filed"]]
    assert turn.report is not None and not turn.follow_up
    assert (turn.report.school_code, turn.report.channel, turn.report.immediate_danger) == (
        "BD-2",
        "telegram",
        False,
    )
    assert turn.report.description == "Người lạ vào lớp học trực tuyến của con"
    assert turn.state.step is ChatStep.done and turn.state.description is None  # text not kept
    assert chat.send("còn nữa").replies == [TEXT["vi"]["done"]]


def test_a_danger_message_gets_the_numbers_first_and_is_filed_at_once() -> None:
    chat = Chat()
    turn = chat.send("Cứu em với, có người đang đe dọa em ngay bây giờ")
    assert turn.emergency
    assert turn.replies[0] == TEXT["vi"]["emergency"]
    assert "113" in turn.replies[0] and "111" in turn.replies[0]
    assert turn.report is not None and turn.report.immediate_danger
    assert turn.report.school_code == UNKNOWN_SCHOOL  # not known yet: filed anyway
    assert turn.replies[1:] == [TEXT["vi"]["filed_now"], TEXT["vi"]["ask_school"]]
    # The reporter goes on: what follows is added to the same incident.
    assert chat.send("THCS Nguyễn Trãi Hà Đông").replies == [TEXT["vi"]["ask_what"]]
    last = chat.send("Kẻ đó nhắn tin qua Zalo, hẹn gặp ở cổng trường")
    assert last.follow_up and last.report is not None
    assert (last.report.school_code, last.report.immediate_danger) == ("HD-1", True)
    assert last.replies == [TEXT["vi"]["added"]]


def test_a_danger_message_after_the_report_was_filed_adds_an_urgent_follow_up() -> None:
    chat = Chat(hint="en")
    chat.send("/start")
    chat.send("BD-2")
    chat.send("A stranger joined the online class")
    chat.send("no")
    turn = chat.send("He is outside the school right now, help me")
    assert turn.replies[0] == TEXT["en"]["emergency"]
    assert turn.follow_up and turn.report is not None and turn.report.immediate_danger


def test_several_schools_of_one_name_are_offered_by_number() -> None:
    chat = Chat(hint="en")
    chat.send("/start")
    offer = chat.send("nguyen trai")
    assert offer.replies[0].startswith(TEXT["en"]["pick_school"])
    assert "1. Trường THCS Nguyễn Trãi (Quận Ba Đình)" in offer.replies[0]
    assert "2. Trường THCS Nguyễn Trãi (Quận Hà Đông)" in offer.replies[0]
    assert chat.send("7").replies[0].startswith(TEXT["en"]["pick_school"])  # not a choice
    assert chat.send("2").replies == [TEXT["en"]["ask_what"]]
    assert chat.state is not None and chat.state.school_code == "HD-1"


def test_a_school_nobody_can_find_is_kept_as_typed() -> None:
    chat = Chat(hint="en")
    chat.send("/start")
    chat.send("Ngoi Sao Xanh international")
    chat.send("Someone posted the class password on Facebook")
    turn = chat.send("no")
    assert turn.report is not None and turn.report.school_code == UNKNOWN_SCHOOL
    assert turn.report.description.endswith(
        "School (as the reporter wrote it): Ngoi Sao Xanh international"
    )


def test_a_first_message_that_tells_the_story_is_kept() -> None:
    chat = Chat()
    chat.send("Có người lạ vào lớp học online của con tôi tối qua")
    assert chat.send("phan chu trinh").replies == [TEXT["vi"]["ask_danger"]]
    turn = chat.send("khong")
    assert turn.report is not None
    assert turn.report.description == "Có người lạ vào lớp học online của con tôi tối qua"


def test_the_language_can_be_switched_and_the_question_is_asked_again() -> None:
    chat = Chat()
    chat.send("/start")
    assert chat.send("/en").replies == [TEXT["en"]["ask_school"]]
    assert chat.send("/vi").replies == [TEXT["vi"]["ask_school"]]


def test_a_redelivered_message_is_not_handled_twice() -> None:
    chat = Chat()
    chat.send("/start")
    state = chat.state
    assert state is not None
    again = advance(state, Incoming("telegram", "42", 1, "/start"), SCHOOLS, T0)
    assert again.replies == [] and again.report is None and again.state == state


@pytest.mark.parametrize(
    ("text", "danger"),
    [
        ("cuu em voi", True),
        ("Em muốn chết", True),
        ("SOS", True),
        ("someone is threatening my child right now", True),
        ("Lớp học bị lộ mật khẩu", False),
        ("nguy cơ", False),
        ("cứu trợ lũ lụt", False),
    ],
)
def test_danger_phrases_with_and_without_accents(text: str, danger: bool) -> None:
    assert says_danger(text) is danger


def test_the_language_guess() -> None:
    assert guess_lang("anything", "en-GB") == "en"
    assert guess_lang("Hello, my child saw something", None) == "en"
    assert guess_lang("con toi bi bat nat", None) == "vi"
    assert guess_lang("Chào bạn", None) == "vi"


def test_a_message_too_short_or_too_long_for_a_report_is_framed_or_cut_not_refused() -> None:
    from schemas.reports import MAX_DESCRIPTION_CHARS

    sos = Chat().send("SOS")
    assert sos.report is not None and sos.replies[0] == TEXT["vi"]["emergency"]
    assert sos.report.description == "Người báo chỉ nhắn: SOS"
    chat = Chat(hint="en")
    chat.send("/start")
    chat.send("BD-2")
    chat.send("x" * (MAX_DESCRIPTION_CHARS + 500))
    long = chat.send("no")
    assert long.report is not None and len(long.report.description) == MAX_DESCRIPTION_CHARS

    # A frightened child may send only emoji; in a chat that is still a report.
    scared = Chat(hint="en")
    scared.send("/start")
    scared.send("BD-2")
    scared.send("😭😭😭😭😭😭")
    filed = scared.send("no")
    assert filed.report is not None
    assert filed.report.description == "The reporter only wrote: 😭😭😭😭😭😭"
