"""Telegram's webhook payloads (saved samples of the documented shapes) and its secret header."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from producers.bots.platform import BadPayload, TelegramPlatform

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
