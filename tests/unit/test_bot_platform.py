"""The platforms' webhook payloads (saved samples of the documented shapes) and their proofs of
origin: Telegram's secret header, Messenger's HMAC of the body, Zalo's MAC."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path

import pytest

from producers.bots.platform import BadPayload, MessengerPlatform, TelegramPlatform, ZaloPlatform

SAMPLES = Path(__file__).parents[1] / "data" / "bots"


@pytest.fixture
def telegram() -> TelegramPlatform:
    return TelegramPlatform("123:ABC", "webhook-secret", "http://127.0.0.1:9")


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def test_only_the_secret_token_header_proves_the_call_comes_from_telegram(
    telegram: TelegramPlatform,
) -> None:
    body = sample("telegram-start.json")
    assert telegram.verify({"x-telegram-bot-api-secret-token": "webhook-secret"}, body)
    assert not telegram.verify({"x-telegram-bot-api-secret-token": "webhook-secreT"}, body)
    assert not telegram.verify({}, body)


def test_text_messages_become_incoming_messages(telegram: TelegramPlatform) -> None:
    (start,) = telegram.incoming(sample("telegram-start.json"))
    assert (start.platform, start.chat, start.update_id, start.text, start.language_hint) == (
        "telegram",
        "7000001",
        500000001,
        "/start",
        "vi",
    )
    (text,) = telegram.incoming(sample("telegram-text.json"))
    assert text.text == "trường thcs phan chu trinh ba đình"


@pytest.mark.parametrize("name", ["telegram-sticker.json", "telegram-edited.json"])
def test_updates_without_new_text_are_taken_and_ignored(
    telegram: TelegramPlatform, name: str
) -> None:
    assert telegram.incoming(sample(name)) == []


@pytest.mark.parametrize("body", [b"", b"[]", b'{"message": {}}', b"\xff"])
def test_a_body_that_is_no_update_is_refused_with_a_reason(
    telegram: TelegramPlatform, body: bytes
) -> None:
    with pytest.raises(BadPayload, match="not a Telegram update"):
        telegram.incoming(body)


def test_a_bot_needs_its_token_and_a_secret() -> None:
    with pytest.raises(ValueError, match="token and a webhook secret"):
        TelegramPlatform("123:ABC", "")
    asyncio.run(TelegramPlatform("123:ABC", "s").aclose())


# ---- Messenger ---------------------------------------------------------------------------------


@pytest.fixture
def messenger() -> MessengerPlatform:
    return MessengerPlatform("app-secret", "page-token", "verify-me", "http://127.0.0.1:9")


def test_messenger_calls_are_signed_with_the_app_secret(messenger: MessengerPlatform) -> None:
    body = sample("messenger-text.json")
    good = "sha256=" + hmac.new(b"app-secret", body, "sha256").hexdigest()
    assert messenger.verify({"x-hub-signature-256": good}, body)
    assert not messenger.verify({"x-hub-signature-256": good}, body + b" ")
    assert not messenger.verify({"x-hub-signature-256": good.upper()}, body)
    assert not messenger.verify({}, body)


def test_messenger_text_messages_only_not_echoes_or_attachments(
    messenger: MessengerPlatform,
) -> None:
    (message,) = messenger.incoming(sample("messenger-text.json"))
    assert (message.platform, message.chat, message.update_id, message.text) == (
        "messenger",
        "6100000000000001",
        1795000000100,
        "Xin chào",
    )
    with pytest.raises(BadPayload, match="not a page subscription"):
        messenger.incoming(b'{"object": "instagram", "entry": []}')


def test_messenger_subscription_challenge_needs_the_verify_token(
    messenger: MessengerPlatform,
) -> None:
    ok = {"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"}
    assert messenger.subscription_challenge(ok) == "1158201444"
    assert messenger.subscription_challenge({**ok, "hub.verify_token": "guess"}) is None
    assert messenger.subscription_challenge({**ok, "hub.mode": "unsubscribe"}) is None


# ---- Zalo --------------------------------------------------------------------------------------


@pytest.fixture
def zalo() -> ZaloPlatform:
    return ZaloPlatform("360846524940903967", "oa-secret", "access", "http://127.0.0.1:9")


def test_zalo_events_are_signed_with_app_id_body_timestamp_and_oa_secret(
    zalo: ZaloPlatform,
) -> None:
    body = sample("zalo-user-send-text.json")
    mac = hashlib.sha256(b"360846524940903967" + body + b"1795000000200" + b"oa-secret")
    assert zalo.verify({"x-zevent-signature": f"mac={mac.hexdigest()}"}, body)
    other = hashlib.sha256(b"360846524940903967" + body + b"1795000000200" + b"app-secret")
    assert not zalo.verify({"x-zevent-signature": f"mac={other.hexdigest()}"}, body)
    assert not zalo.verify({"x-zevent-signature": f"mac={mac.hexdigest()}"}, b"{}")


def test_zalo_text_events_become_messages_and_others_are_ignored(zalo: ZaloPlatform) -> None:
    (message,) = zalo.incoming(sample("zalo-user-send-text.json"))
    assert (message.platform, message.chat, message.update_id, message.text) == (
        "zalo",
        "246845883529197922",
        1795000000200,
        "con tôi bị bắt nạt trên mạng",
    )
    assert zalo.incoming(sample("zalo-follow.json")) == []
    foreign = sample("zalo-user-send-text.json").replace(b"360846524940903967", b"1")
    with pytest.raises(BadPayload, match="another Zalo app"):
        zalo.incoming(foreign)
