"""A stand-in for Telegram's Bot API on a local port: records what the bot sends.

The intake is pointed at it with ESCALATE_TELEGRAM_API_BASE; tests read ``sent``. It answers
``sendMessage`` as Telegram does (``{"ok": true, "result": ...}``) and 403 for chats listed in
``blocked`` (a user who blocked the bot).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.services.http import serve

TOKEN = "123456:TEST-token"
SECRET = "webhook-secret-for-tests"


@dataclass
class FakeTelegram:
    base: str = ""
    sent: list[tuple[int, str]] = field(default_factory=list)
    blocked: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def texts(self, chat: int) -> list[str]:
        with self.lock:
            return [text for c, text in self.sent if c == chat]

    def wait_for(self, chat: int, count: int, timeout_s: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(found := self.texts(chat)) < count:
            assert time.monotonic() < deadline, f"only {found} sent to {chat}"
            time.sleep(0.05)
        return found


@contextlib.contextmanager
def fake_telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram()
    app = FastAPI()

    @app.post(f"/bot{TOKEN}/sendMessage")
    async def send_message(request: Request) -> JSONResponse:
        body: dict[str, Any] = await request.json()
        chat = int(body["chat_id"])
        if chat in fake.blocked:
            return JSONResponse(
                {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked"},
                status_code=403,
            )
        with fake.lock:
            fake.sent.append((chat, str(body["text"])))
        return JSONResponse({"ok": True, "result": {"message_id": len(fake.sent)}})

    with serve(app) as base:
        fake.base = base
        yield fake


def update(update_id: int, chat: int, text: str, language: str | None = "vi") -> dict[str, Any]:
    """A Telegram update with one text message, in the documented shape."""
    sender: dict[str, Any] = {"id": chat, "is_bot": False, "first_name": "Test"}
    if language:
        sender["language_code"] = language
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": sender,
            "chat": {"id": chat, "type": "private", "first_name": "Test"},
            "date": 1795000000 + update_id,
            "text": text,
        },
    }
