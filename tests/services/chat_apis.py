"""Stand-ins for the chat platforms' send APIs on a local port: record what the bots send.

The intake is pointed at it with ESCALATE_TELEGRAM_API_BASE (and the Messenger and Zalo
equivalents); tests read ``sent``. It answers as each platform does: Telegram's
``sendMessage`` (``{"ok": true, ...}``, 403 for chats in ``blocked``, a user who blocked the
bot), Messenger's Send API (``/me/messages``) and Zalo's OA message API
(``/v3.0/oa/message/cs``, 200 with ``{"error": 0}``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
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
MESSENGER_APP_SECRET = "messenger-app-secret"
MESSENGER_PAGE_TOKEN = "messenger-page-token"
MESSENGER_VERIFY_TOKEN = "messenger-verify-token"
ZALO_APP_ID = "360846524940903967"
ZALO_OA_SECRET = "zalo-oa-secret"
ZALO_ACCESS_TOKEN = "zalo-access-token"


@dataclass
class FakeChatApis:
    base: str = ""
    sent: list[tuple[int | str, str]] = field(default_factory=list)
    blocked: set[int | str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def texts(self, chat: int | str) -> list[str]:
        with self.lock:
            return [text for c, text in self.sent if c == chat]

    def wait_for(self, chat: int | str, count: int, timeout_s: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(found := self.texts(chat)) < count:
            assert time.monotonic() < deadline, f"only {found} sent to {chat}"
            time.sleep(0.05)
        return found


@contextlib.contextmanager
def fake_chat_apis() -> Iterator[FakeChatApis]:
    fake = FakeChatApis()
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

    @app.post("/me/messages")
    async def messenger_send(request: Request) -> JSONResponse:
        assert request.query_params.get("access_token") == MESSENGER_PAGE_TOKEN
        body: dict[str, Any] = await request.json()
        chat = str(body["recipient"]["id"])
        with fake.lock:
            fake.sent.append((chat, str(body["message"]["text"])))
        return JSONResponse({"recipient_id": chat, "message_id": f"m_{len(fake.sent)}"})

    @app.post("/v3.0/oa/message/cs")
    async def zalo_send(request: Request) -> JSONResponse:
        if request.headers.get("access_token") != ZALO_ACCESS_TOKEN:
            return JSONResponse({"error": -216, "message": "Access token is invalid"})
        body: dict[str, Any] = await request.json()
        chat = str(body["recipient"]["user_id"])
        with fake.lock:
            fake.sent.append((chat, str(body["message"]["text"])))
        return JSONResponse({"error": 0, "message": "Success", "data": {"message_id": "z1"}})

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


def messenger_callback(timestamp: int, sender: str, text: str) -> dict[str, Any]:
    """A page webhook callback with one message, in the documented shape."""
    return {
        "object": "page",
        "entry": [
            {
                "id": "104000000000001",
                "time": timestamp,
                "messaging": [
                    {
                        "sender": {"id": sender},
                        "recipient": {"id": "104000000000001"},
                        "timestamp": timestamp,
                        "message": {"mid": f"m_{timestamp}", "text": text},
                    }
                ],
            }
        ],
    }


def messenger_signature(body: bytes) -> str:
    return "sha256=" + hmac.new(MESSENGER_APP_SECRET.encode(), body, "sha256").hexdigest()


def zalo_event(timestamp: int, sender: str, text: str) -> dict[str, Any]:
    """A user_send_text event of a Zalo OA, in the documented shape (ids and time as strings)."""
    return {
        "app_id": ZALO_APP_ID,
        "user_id_by_app": "552177279717587730",
        "event_name": "user_send_text",
        "timestamp": str(timestamp),
        "sender": {"id": sender},
        "recipient": {"id": "388613280878808645"},
        "message": {"text": text, "msg_id": f"z{timestamp}"},
    }


def zalo_signature(body: bytes, timestamp: int) -> str:
    digest = hashlib.sha256(
        ZALO_APP_ID.encode() + body + str(timestamp).encode() + ZALO_OA_SECRET.encode()
    ).hexdigest()
    return f"mac={digest}"
