"""What every chat platform adapter provides, and Telegram's.

An adapter checks that a webhook call really comes from the platform, turns its payload into
``Incoming`` messages and sends replies. Everything else (the conversation, storing state and
reports) is the same for every platform (``producers.bots.routes``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
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


# ---- Facebook Messenger -----------------------------------------------------------------------
# https://developers.facebook.com/docs/messenger-platform/webhooks (page subscription, messages)


class _MessengerMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    mid: str
    text: str | None = None
    is_echo: bool = False


class _MessengerParty(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str


class _MessengerEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sender: _MessengerParty
    timestamp: int
    message: _MessengerMessage | None = None


class _MessengerEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")
    messaging: list[_MessengerEvent] = Field(default_factory=list)


class _MessengerCallback(BaseModel):
    model_config = ConfigDict(extra="ignore")
    object: str
    entry: list[_MessengerEntry]


class MessengerPlatform:
    """Page webhooks signed with the app secret (``X-Hub-Signature-256``), replies through the
    Send API with the page's token. Messenger numbers nothing per chat, so the event's
    timestamp (ms) stands for the message id."""

    name = "messenger"

    def __init__(
        self,
        app_secret: str,
        page_token: str,
        verify_token: str,
        api_base: str = "https://graph.facebook.com/v19.0",
    ) -> None:
        if not app_secret or not page_token or not verify_token:
            raise ValueError("a Messenger bot needs the app secret, page token and verify token")
        self._secret = app_secret.encode("utf-8")
        self._page_token = page_token
        self._verify_token = verify_token.encode("utf-8")
        self._api = api_base.rstrip("/")
        self._client = httpx.AsyncClient(timeout=10.0)

    def verify(self, headers: Mapping[str, str], body: bytes) -> bool:
        given = headers.get("x-hub-signature-256", "")
        expected = "sha256=" + hmac.new(self._secret, body, "sha256").hexdigest()
        return hmac.compare_digest(given.encode("ascii", "replace"), expected.encode("ascii"))

    def subscription_challenge(self, params: Mapping[str, str]) -> str | None:
        """Meta's GET when the webhook is registered: the challenge back if the token fits."""
        token = params.get("hub.verify_token", "").encode("utf-8")
        if params.get("hub.mode") != "subscribe" or not hmac.compare_digest(
            token, self._verify_token
        ):
            return None
        return params.get("hub.challenge", "")

    def incoming(self, body: bytes) -> list[Incoming]:
        try:
            callback = _MessengerCallback.model_validate_json(body)
        except ValidationError as exc:
            raise BadPayload(f"not a Messenger callback: {exc.error_count()} problem(s)") from exc
        if callback.object != "page":
            raise BadPayload(f"not a page subscription: object {callback.object!r}")
        return [
            Incoming(self.name, event.sender.id, event.timestamp, event.message.text)
            for entry in callback.entry
            for event in entry.messaging
            if event.message is not None and event.message.text and not event.message.is_echo
        ]

    async def send(self, chat: str, text: str) -> None:
        try:
            resp = await self._client.post(
                f"{self._api}/me/messages",
                params={"access_token": self._page_token},
                json={
                    "recipient": {"id": chat},
                    "messaging_type": "RESPONSE",
                    "message": {"text": text},
                },
            )
        except httpx.HTTPError as exc:
            raise SendFailed(f"Messenger unreachable: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            raise SendFailed(f"Messenger answered {resp.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()


# ---- Zalo Official Account --------------------------------------------------------------------
# Events are signed X-ZEvent-Signature: mac=sha256(app id + body + timestamp + OA secret key).


class _ZaloMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str | None = None
    msg_id: str | None = None


class _ZaloEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")
    app_id: str
    event_name: str
    sender: _MessengerParty
    timestamp: int
    message: _ZaloMessage | None = None


class ZaloPlatform:
    """Zalo OA webhook events in, OA customer-service messages out (``message/cs``).

    The OA access token expires (about a day); whoever runs the OA refreshes it and restarts
    the intake with the new one."""

    name = "zalo"

    def __init__(
        self,
        app_id: str,
        oa_secret: str,
        access_token: str,
        api_base: str = "https://openapi.zalo.me",
    ) -> None:
        if not app_id or not oa_secret or not access_token:
            raise ValueError("a Zalo bot needs the app id, the OA secret key and an access token")
        self._app_id = app_id
        self._secret = oa_secret
        self._token = access_token
        self._api = api_base.rstrip("/")
        self._client = httpx.AsyncClient(timeout=10.0)

    def verify(self, headers: Mapping[str, str], body: bytes) -> bool:
        given = headers.get("x-zevent-signature", "")
        try:
            timestamp = str(json.loads(body)["timestamp"])
        except (ValueError, KeyError, TypeError):
            return False
        digest = hashlib.sha256(
            self._app_id.encode() + body + timestamp.encode() + self._secret.encode()
        ).hexdigest()
        return hmac.compare_digest(given.encode("ascii", "replace"), f"mac={digest}".encode())

    def incoming(self, body: bytes) -> list[Incoming]:
        try:
            event = _ZaloEvent.model_validate_json(body)
        except ValidationError as exc:
            raise BadPayload(f"not a Zalo OA event: {exc.error_count()} problem(s)") from exc
        if event.app_id != self._app_id:
            raise BadPayload("an event for another Zalo app")
        if event.event_name != "user_send_text" or event.message is None or not event.message.text:
            return []  # follows, stickers, images: nothing to answer
        return [Incoming(self.name, event.sender.id, event.timestamp, event.message.text)]

    async def send(self, chat: str, text: str) -> None:
        try:
            resp = await self._client.post(
                f"{self._api}/v3.0/oa/message/cs",
                headers={"access_token": self._token},
                json={"recipient": {"user_id": chat}, "message": {"text": text}},
            )
        except httpx.HTTPError as exc:
            raise SendFailed(f"Zalo unreachable: {type(exc).__name__}") from exc
        # Zalo answers 200 with its own error code in the body.
        try:
            error = int(resp.json().get("error", -1)) if resp.status_code == 200 else -1
        except (ValueError, AttributeError):
            error = -1
        if error != 0:
            raise SendFailed(f"Zalo answered {resp.status_code}, error {error}")

    async def aclose(self) -> None:
        await self._client.aclose()
