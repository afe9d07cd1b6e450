"""The deliveries beside the mail, one small adapter per kind.

A kind turns a notification request into its deliveries: for each target the organisation
listed in the directory, a message id (the same on every retry, so a receiver can drop a
repeat) and one attempt to send. Everything after that is shared by every kind in the worker:
the retry policy, the result and audit record (``channel_outcome``), the metric and the dead
letter. Adding SMS or Zalo ZNS is one more class here, listed in ``default_kinds``, and its
channel name in ``delivery.Channel``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from consumers.notifier.chat_alerts import TelegramAlerts, render_alert, telegram_message_id
from consumers.notifier.delivery import Channel
from consumers.notifier.webhooks import WebhookSender, render_webhook, webhook_id
from schemas.common import utcnow
from schemas.directory import WebhookTarget
from schemas.notifications import NotificationRequest


@dataclass(frozen=True)
class Delivery:
    """One message to one target, ready to be attempted."""

    channel: Channel
    #: what the result and the audit record name (a URL, a chat id)
    target: str
    #: what logs and dead letters name: never a secret (a webhook URL may carry a token)
    shown: str
    message_id: str
    attempt: Callable[[], Awaitable[None]]


class DeliveryKind(Protocol):
    channel: Channel

    def deliveries(
        self, req: NotificationRequest, link: Callable[[], str | None]
    ) -> list[Delivery]:
        """This request's deliveries of this kind; none when the recipient lists no target.
        ``link()`` signs the recipient's acknowledgement link (None without a signing key);
        a kind that shows none need not pay for it."""
        ...


class Webhooks:
    """The organisation's own systems: a signed JSON event (Standard Webhooks) per URL."""

    channel: Channel = "webhook"

    def __init__(self, sender: WebhookSender) -> None:
        self.sender = sender

    def deliveries(
        self, req: NotificationRequest, link: Callable[[], str | None]
    ) -> list[Delivery]:
        if not req.recipient.webhooks:
            return []
        body = render_webhook(req, utcnow())
        found = []
        for hook in req.recipient.webhooks:
            msg_id = webhook_id(req, hook)

            async def post(hook: WebhookTarget = hook, msg_id: str = msg_id) -> None:
                await self.sender.send(hook, msg_id, body)

            found.append(Delivery(self.channel, str(hook.url), hook.url.host or "?", msg_id, post))
        return found


class TelegramChats:
    """Duty officers' chats: a short alert with the acknowledgement link."""

    channel: Channel = "telegram"

    def __init__(self, alerts: TelegramAlerts) -> None:
        self.alerts = alerts

    def deliveries(
        self, req: NotificationRequest, link: Callable[[], str | None]
    ) -> list[Delivery]:
        if not req.recipient.telegram_chat_ids:
            return []
        text = render_alert(req, link())
        found = []
        for chat in req.recipient.telegram_chat_ids:

            async def alert(chat: int = chat) -> None:
                await self.alerts.send(chat, text)

            msg_id = telegram_message_id(req, chat)
            found.append(Delivery(self.channel, str(chat), f"chat {chat}", msg_id, alert))
        return found
