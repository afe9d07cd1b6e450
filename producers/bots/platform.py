"""What every chat platform adapter provides, and Telegram's.

An adapter checks that a webhook call really comes from the platform, turns its payload into
``Incoming`` messages and sends replies. Everything else (the conversation, storing state and
reports) is the same for every platform (``producers.bots.routes``).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from producers.bots.conversation import Incoming

log = logging.getLogger("escalate.bots")


class BadPayload(ValueError):
    """The body is not what the platform documents; the message says what is wrong."""


class SendFailed(RuntimeError):
    """The platform did not take a reply."""


class ChatPlatform(Protocol):
    name: str

    def verify(self, headers: Mapping[str, str], body: bytes) -> bool:
        """True when the call carries the platform's proof of origin."""
        ...

    def incoming(self, body: bytes) -> list[Incoming]:
        """The text messages in a verified payload (others, e.g. stickers, are ignored)."""
        ...

    async def send(self, chat: str, text: str) -> None: ...

    async def aclose(self) -> None: ...


# ---- Telegram ---------------------------------------------------------------------------------
# The parts of https://core.telegram.org/bots/api#update the bot reads.


class _TelegramChat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int


class _TelegramUser(BaseModel):
    model_config = ConfigDict(extra="ignore")
    language_code: str | None = None


class _TelegramMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    message_id: int
    chat: _TelegramChat
    sender: _TelegramUser | None = Field(default=None, alias="from")
    text: str | None = None


class _TelegramUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    update_id: int
    message: _TelegramMessage | None = None


class TelegramPlatform:
    """Webhook updates in, ``sendMessage`` out, through the Bot API at ``api_base``."""

    name = "telegram"

    def __init__(
        self, token: str, secret_token: str, api_base: str = "https://api.telegram.org"
    ) -> None:
        if not token or not secret_token:
            raise ValueError("a Telegram bot needs its token and a webhook secret token")
        self._token = token
        self._secret = secret_token.encode("utf-8")
        self._api = f"{api_base.rstrip('/')}/bot{token}"
        self._client = httpx.AsyncClient(timeout=10.0)

    def verify(self, headers: Mapping[str, str], body: bytes) -> bool:
        given = headers.get("x-telegram-bot-api-secret-token", "")
        return hmac.compare_digest(given.encode("utf-8"), self._secret)

    def incoming(self, body: bytes) -> list[Incoming]:
        try:
            update = _TelegramUpdate.model_validate_json(body)
        except ValidationError as exc:
            raise BadPayload(f"not a Telegram update: {exc.error_count()} problem(s)") from exc
        message = update.message
        if message is None or message.text is None:
            return []  # edits, stickers, photos, joins: nothing to answer
        return [
            Incoming(
                platform=self.name,
                chat=str(message.chat.id),
                update_id=update.update_id,
                text=message.text,
                language_hint=message.sender.language_code if message.sender else None,
            )
        ]

    async def send(self, chat: str, text: str) -> None:
        try:
            resp = await self._client.post(
                f"{self._api}/sendMessage", json={"chat_id": int(chat), "text": text}
            )
        except httpx.HTTPError as exc:
            raise SendFailed(f"Telegram unreachable: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            # Telegram's description says why (blocked by the user, chat not found, ...).
            try:
                reason = str(resp.json().get("description", ""))[:200]
            except ValueError:
                reason = ""
            raise SendFailed(f"Telegram answered {resp.status_code}: {reason}")

    async def aclose(self) -> None:
        await self._client.aclose()
