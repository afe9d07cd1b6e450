"""Messenger and Zalo bots against the real broker and stand-ins for their send APIs
(issue 12): the same conversation as on Telegram, each platform's proof of origin checked,
Messenger's subscription challenge answered only with the verify token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from producers.bots.conversation import TEXT
from producers.bots.platform import MessengerPlatform, TelegramPlatform, ZaloPlatform
from schemas.reports import ReportSubmitted
from schemas.topics import REPORTS_SUBMITTED
from tests.integration.test_report_status import read_to_end
from tests.services.chat_apis import (
    MESSENGER_APP_SECRET,
    MESSENGER_PAGE_TOKEN,
    MESSENGER_VERIFY_TOKEN,
    SECRET,
    TOKEN,
    ZALO_ACCESS_TOKEN,
    ZALO_APP_ID,
    ZALO_OA_SECRET,
    FakeChatApis,
    fake_chat_apis,
    messenger_callback,
    messenger_signature,
    zalo_event,
    zalo_signature,
)
from tests.services.intake import intake_app

pytestmark = pytest.mark.kafka

PSID = "6100000000000001"
ZALO_USER = "246845883529197922"
STORY = "Có người lạ vào lớp học trực tuyến và đọc to mật khẩu lớp học"
STEPS = ["/start", "phan chu trinh ba dinh", STORY, "không"]


@dataclass
class Bots:
    client: TestClient
    apis: FakeChatApis
    bootstrap: str
    prefix: str
    registry: CollectorRegistry

    def refused(self, platform: str) -> float:
        found = self.registry.get_sample_value(
            "escalate_bot_updates_total", {"platform": platform, "outcome": "unauthorized"}
        )
        return found or 0.0

    def messenger(self, timestamp: int, text: str, signature: str | None = None) -> httpx.Response:
        body = json.dumps(messenger_callback(timestamp, PSID, text)).encode()
        return self.client.post(
            "/v1/bots/messenger",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": signature or messenger_signature(body),
            },
        )

    def zalo(self, timestamp: int, text: str, signature: str | None = None) -> httpx.Response:
        body = json.dumps(zalo_event(timestamp, ZALO_USER, text), ensure_ascii=False).encode()
        return self.client.post(
            "/v1/bots/zalo",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-ZEvent-Signature": signature or zalo_signature(body, timestamp),
            },
        )

    def reports(self) -> list[ReportSubmitted]:
        return [
            ReportSubmitted.model_validate_json(v)
            for v in read_to_end(self.bootstrap, REPORTS_SUBMITTED.name(self.prefix))
        ]


@pytest.fixture
def bots(kafka_bootstrap: str, isolation: str) -> Iterator[Bots]:
    prefix = f"{isolation}."
    with fake_chat_apis() as apis:
        platforms = [
            TelegramPlatform(TOKEN, SECRET, apis.base),
            MessengerPlatform(
                MESSENGER_APP_SECRET, MESSENGER_PAGE_TOKEN, MESSENGER_VERIFY_TOKEN, apis.base
            ),
            ZaloPlatform(ZALO_APP_ID, ZALO_OA_SECRET, ZALO_ACCESS_TOKEN, apis.base),
        ]
        with (
            intake_app(kafka_bootstrap, prefix, bots=platforms) as made,
            TestClient(made.app) as client,
        ):
            yield Bots(client, apis, kafka_bootstrap, prefix, made.registry)


def test_a_messenger_conversation_files_a_report(bots: Bots) -> None:
    for n, text in enumerate(STEPS):
        assert bots.messenger(1795000000000 + n, text).status_code == 200
    replies = bots.apis.wait_for(PSID, 6)
    assert replies[2:5] == [TEXT["vi"][k] for k in ("ask_school", "ask_what", "ask_danger")]
    (report,) = bots.reports()
    assert (report.report.channel, report.report.school_code, report.report.description) == (
        "messenger",
        "HN-BD-THCS-001",
        STORY,
    )
    assert report.tracking_code in replies[5]


def test_a_zalo_conversation_files_a_report(bots: Bots) -> None:
    for n, text in enumerate(STEPS):
        assert bots.zalo(1795000000000 + n, text).status_code == 200
    replies = bots.apis.wait_for(ZALO_USER, 6)
    (report,) = bots.reports()
    assert (report.report.channel, report.report.school_code) == ("zalo", "HN-BD-THCS-001")
    assert report.tracking_code in replies[5]


def test_unsigned_or_wrongly_signed_calls_are_refused(bots: Bots) -> None:
    assert bots.messenger(1, "/start", signature="sha256=" + "0" * 64).status_code == 401
    assert bots.zalo(1, "/start", signature="mac=" + "0" * 64).status_code == 401
    assert bots.client.post("/v1/bots/messenger", json={"object": "page"}).status_code == 401
    unsigned = json.dumps(zalo_event(2, ZALO_USER, "/start")).encode()
    assert bots.client.post("/v1/bots/zalo", content=unsigned).status_code == 401
    assert bots.reports() == []
    assert bots.apis.sent == []
    # Each refusal is counted, per platform, for the operators' dashboard.
    assert (bots.refused("messenger"), bots.refused("zalo")) == (2.0, 2.0)


def test_messenger_subscription_challenge(bots: Bots) -> None:
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": MESSENGER_VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    ok = bots.client.get("/v1/bots/messenger", params=params)
    assert (ok.status_code, ok.text) == (200, "1158201444")
    wrong = bots.client.get("/v1/bots/messenger", params={**params, "hub.verify_token": "x"})
    assert wrong.status_code == 403
