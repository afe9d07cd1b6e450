"""Each delivery kind beside the mail turns a request into its deliveries: one per target, with
a message id that a retry repeats, a display name without secrets, and the link signed only when
the kind shows it."""

from __future__ import annotations

import asyncio

from consumers.notifier.chat_alerts import TelegramAlerts
from consumers.notifier.kinds import Delivery, TelegramChats, Webhooks
from consumers.notifier.webhooks import WebhookSender
from schemas.directory import WebhookTarget
from schemas.notifications import NotificationRequest, Recipient
from tests.unit.test_render import make_request

HOOKS = [
    WebhookTarget(url="https://hooks.bd.example/escalate?token=s3cret", secret_env="BD_HOOK"),
    WebhookTarget(url="https://backup.bd.example/in", secret_env="BD_HOOK"),
]


def request(**recipient: object) -> NotificationRequest:
    base = make_request().recipient.model_dump()
    return make_request(recipient=Recipient(**{**base, **recipient}))


class Signed:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return "https://escalate.example/a/TOKEN"


def test_a_recipient_without_targets_gets_nothing_and_no_link_is_signed() -> None:
    link = Signed()
    req = request()
    assert Webhooks(WebhookSender({})).deliveries(req, link) == []
    assert TelegramChats(TelegramAlerts("")).deliveries(req, link) == []
    assert link.calls == 0


def test_one_webhook_delivery_per_url_named_by_host_only() -> None:
    link = Signed()
    found = Webhooks(WebhookSender({})).deliveries(request(webhooks=HOOKS), link)
    assert [(d.channel, d.shown) for d in found] == [
        ("webhook", "hooks.bd.example"),
        ("webhook", "backup.bd.example"),
    ]
    assert all("s3cret" not in d.shown for d in found)
    assert len({d.message_id for d in found}) == 2
    again = Webhooks(WebhookSender({})).deliveries(request(webhooks=HOOKS), link)
    assert [d.message_id for d in again] == [d.message_id for d in found]  # stable on a retry
    assert link.calls == 0  # a webhook event carries no personal link


def test_one_alert_per_duty_chat_with_the_signed_link() -> None:
    link = Signed()
    sent: list[tuple[int, str]] = []

    class Alerts(TelegramAlerts):
        async def send(self, chat_id: int, text: str) -> None:
            sent.append((chat_id, text))

    found = TelegramChats(Alerts("token")).deliveries(request(telegram_chat_ids=[-100, 42]), link)
    assert [(d.channel, d.target, d.shown) for d in found] == [
        ("telegram", "-100", "chat -100"),
        ("telegram", "42", "chat 42"),
    ]
    assert link.calls == 1  # signed once for all the chats

    async def attempt_all(deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            await delivery.attempt()

    asyncio.run(attempt_all(found))
    assert [chat for chat, _ in sent] == [-100, 42]
    assert all("https://escalate.example/a/TOKEN" in text for _, text in sent)
