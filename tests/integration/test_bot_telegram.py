"""The Telegram bot against the real broker and a stand-in for Telegram's Bot API (issue 12):
a conversation files a report like the web form does, a forged call is refused, a danger
message gets 113/111 before anything else and is filed at once, a redelivered update files
nothing twice, and a conversation goes on after the intake is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from escalate.topics_admin import ensure_topics
from producers.bots.conversation import TEXT
from producers.bots.platform import TelegramPlatform
from schemas.bots import Conversation
from schemas.reports import ReportSubmitted
from schemas.topics import BOTS_CONVERSATIONS, REPORTS_SUBMITTED
from tests.conftest import free_port
from tests.integration.test_report_status import read_to_end
from tests.services.chat_apis import SECRET, TOKEN, FakeChatApis, fake_chat_apis, update
from tests.services.intake import intake_app

pytestmark = pytest.mark.kafka

CHAT = 7000001
STORY = "Có người lạ vào lớp học trực tuyến của con tôi và đọc to mật khẩu lớp"
HEADERS = {"X-Telegram-Bot-Api-Secret-Token": SECRET}


@dataclass
class Bot:
    client: TestClient
    telegram: FakeChatApis
    bootstrap: str
    prefix: str
    registry: CollectorRegistry

    def say(self, update_id: int, text: str, chat: int = CHAT) -> httpx.Response:
        return self.client.post(
            "/v1/bots/telegram", json=update(update_id, chat, text), headers=HEADERS
        )

    def reports(self) -> list[ReportSubmitted]:
        return [
            ReportSubmitted.model_validate_json(v)
            for v in read_to_end(self.bootstrap, REPORTS_SUBMITTED.name(self.prefix))
        ]

    def conversations(self) -> list[Conversation]:
        return [
            Conversation.model_validate_json(v)
            for v in read_to_end(self.bootstrap, BOTS_CONVERSATIONS.name(self.prefix))
        ]


@pytest.fixture
def bot(kafka_bootstrap: str, isolation: str) -> Iterator[Bot]:
    prefix = f"{isolation}."
    with fake_chat_apis() as telegram:
        platforms = [TelegramPlatform(TOKEN, SECRET, telegram.base)]
        with (
            intake_app(kafka_bootstrap, prefix, bots=platforms) as made,
            TestClient(made.app) as client,
        ):
            yield Bot(client, telegram, kafka_bootstrap, prefix, made.registry)


def test_a_conversation_files_a_report_with_what_the_form_asks(bot: Bot) -> None:
    t = TEXT["vi"]
    for n, text in enumerate(["/start", "phan chu trinh ba dinh", STORY, "không"], start=1):
        assert bot.say(n, text).status_code == 200
    replies = bot.telegram.wait_for(CHAT, 6)
    assert replies[:5] == [
        t["hello"],
        t["emergency"],
        t["ask_school"],
        t["ask_what"],
        t["ask_danger"],
    ]
    (report,) = bot.reports()
    assert report.report.channel == "telegram" and report.intake_client == "telegram"
    assert report.report.school_code == "HN-BD-THCS-001"
    assert report.report.description == STORY
    assert report.report.immediate_danger is False
    assert report.report.contact is None  # nothing about the chat is kept in the report
    assert report.tracking_code in replies[5]
    assert f"https://intake.example/report/status?code={report.tracking_code}" in replies[5]
    # The chat's state is on the topic, without the story once it is filed.
    last = bot.conversations()[-1]
    assert (last.step, last.description, last.tracking_code) == ("done", None, report.tracking_code)


def test_a_call_without_telegrams_secret_is_refused_and_stores_nothing(bot: Bot) -> None:
    forged = bot.client.post(
        "/v1/bots/telegram",
        json=update(1, CHAT, "/start"),
        headers={"X-Telegram-Bot-Api-Secret-Token": "guessed"},
    )
    missing = bot.client.post("/v1/bots/telegram", json=update(2, CHAT, "/start"))
    assert (forged.status_code, missing.status_code) == (401, 401)
    garbage = bot.client.post("/v1/bots/telegram", content=b"{", headers=HEADERS)
    assert garbage.status_code == 400 and "not a Telegram update" in garbage.json()["error"]
    assert bot.reports() == [] and bot.conversations() == []
    assert bot.telegram.texts(CHAT) == []
    unauthorized = bot.registry.get_sample_value(
        "escalate_bot_updates_total", {"platform": "telegram", "outcome": "unauthorized"}
    )
    assert unauthorized == 2


def test_a_child_in_danger_gets_the_numbers_first_and_the_report_is_filed_at_once(
    bot: Bot,
) -> None:
    assert bot.say(1, "Cứu em với, có người đang đe dọa em ngay bây giờ").status_code == 200
    first, filed, question = bot.telegram.wait_for(CHAT, 3)
    assert "113" in first and "111" in first  # before any question
    (report,) = bot.reports()  # filed although the conversation may stop here
    assert report.report.immediate_danger is True
    assert report.tracking_code in filed
    assert question == TEXT["vi"]["ask_school"]
    # What follows is added to the same incident.
    bot.say(2, "THCS Phan Chu Trinh")
    bot.say(3, "Kẻ đó nhắn tin qua Zalo và hẹn gặp em ở cổng trường")
    assert bot.telegram.wait_for(CHAT, 5)[3:] == [
        TEXT["vi"]["ask_what"],
        TEXT["vi"]["added"].replace("{code}", report.tracking_code),
    ]
    reports = bot.reports()  # on different partitions: in no particular order
    (addition,) = [r for r in reports if r.follow_up_of is not None]
    (first_report,) = [r for r in reports if r.follow_up_of is None]
    assert addition.follow_up_of == f"inc-{first_report.report_id}"
    assert (addition.report.school_code, addition.report.immediate_danger) == (
        "HN-BD-THCS-001",
        True,
    )


def test_an_update_delivered_twice_is_handled_once(bot: Bot) -> None:
    for n, text in enumerate(["/start", "phan chu trinh", STORY], start=1):
        bot.say(n, text)
    assert bot.say(4, "không").status_code == 200
    replies = bot.telegram.wait_for(CHAT, 6)
    assert bot.say(4, "không").status_code == 200  # Telegram retrying
    time.sleep(0.5)
    assert bot.telegram.texts(CHAT) == replies
    assert len(bot.reports()) == 1


def test_a_reply_telegram_refuses_does_not_lose_the_report(bot: Bot) -> None:
    bot.telegram.blocked.add(CHAT)
    for n, text in enumerate(["/start", "phan chu trinh", STORY, "không"], start=1):
        assert bot.say(n, text).status_code == 200
    assert len(bot.reports()) == 1
    failed = bot.registry.get_sample_value(
        "escalate_bot_replies_failed_total", {"platform": "telegram"}
    )
    assert failed is not None and failed >= 4


# ---- kill -9 of the intake in the middle of a conversation ------------------------------------


def start_intake(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "escalate.cli", "run", "intake"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the intake exited"
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the intake did not get ready")


def post_until_handled(base: str, body: dict[str, Any], timeout_s: float = 60) -> None:
    """As Telegram does: deliver again while the answer is not 200 (503 while reading back)."""
    deadline = time.monotonic() + timeout_s
    while True:
        resp = httpx.post(f"{base}/v1/bots/telegram", json=body, headers=HEADERS, timeout=30)
        if resp.status_code == 200:
            return
        assert resp.status_code == 503 and time.monotonic() < deadline, resp.text
        time.sleep(0.5)


def test_a_conversation_goes_on_after_the_intake_is_killed(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with fake_chat_apis() as telegram:
        env = {
            "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "ESCALATE_TOPIC_PREFIX": prefix,
            "ESCALATE_HTTP_PORT": str(port),
            "ESCALATE_METRICS_PORT": "0",
            "ESCALATE_VAR_DIR": str(tmp_path / "var"),
            "ESCALATE_TELEGRAM_BOT_TOKEN": TOKEN,
            "ESCALATE_TELEGRAM_SECRET_TOKEN": SECRET,
            "ESCALATE_TELEGRAM_API_BASE": telegram.base,
            "ESCALATE_PUBLIC_URL": "https://intake.example",
        }
        proc = start_intake(env, tmp_path / "intake.log")
        try:
            wait_ready(base, proc)
            post_until_handled(base, update(1, CHAT, "/start"))
            post_until_handled(base, update(2, CHAT, "Trường THCS Phan Chu Trinh Ba Đình"))
            assert telegram.wait_for(CHAT, 4)[-1] == TEXT["vi"]["ask_what"]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

            proc = start_intake(env, tmp_path / "intake.log")
            wait_ready(base, proc)
            post_until_handled(base, update(3, CHAT, STORY))
            post_until_handled(base, update(4, CHAT, "không"))
            replies = telegram.wait_for(CHAT, 6)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert replies[4] == TEXT["vi"]["ask_danger"]  # the question after the story, not a greeting
    reports = [
        ReportSubmitted.model_validate_json(v)
        for v in read_to_end(kafka_bootstrap, REPORTS_SUBMITTED.name(prefix))
    ]
    assert [(r.report.school_code, r.report.description) for r in reports] == [
        ("HN-BD-THCS-001", STORY)
    ]
    assert reports[0].tracking_code in replies[5]
