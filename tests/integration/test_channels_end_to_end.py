"""Every channel end to end (issue 12): `escalate up` on the real broker, started once for the
module, with every bot configured against local stand-ins of the platforms' APIs.

In: a report through each channel's own payload (the Telegram, Messenger and Zalo bots, signed
as each platform signs; the web form with its token; `escalate import` of a CSV file) reaches a
mail in a real SMTP server, and the audit trail names the channel it came by.

Out: the pipeline tells the authorities by every channel the directory gives them: mail, a signed
webhook to the district office's system (verified by a receiver on a real port), a short alert
to the district police's duty chat. The office's system answers through the authority API, and
the acknowledgement travels through Kafka to the escalator and back out as the incident's state,
the audit trail and the news to everyone told."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from producers.intake.keys import hashed
from schemas.webhooks import WebhookEvent
from tests.integration.test_end_to_end import (
    DIRECTORY,
    KEY,
    Sink,
    post,
    running_pipeline,
    timeline,
    wait_for,
)
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
    update,
    zalo_event,
    zalo_signature,
)
from tests.services.forms import post_form
from tests.services.webhook_receiver import SECRET as HOOK_SECRET
from tests.services.webhook_receiver import Receiver, webhook_receiver

pytestmark = pytest.mark.kafka

PARENT = 7000042
DUTY_CHAT = -1009876543210
STORY = "Một người lạ nhắn tin cho con tôi, đòi gửi ảnh khỏa thân và hẹn gặp riêng ở cổng trường."
#: the district office's own system, as the authority API knows it
OFFICE_SYSTEM = "badinh-office-system"
OFFICE_KEY = "a-key-only-the-ba-dinh-office-system-holds"
TRACKING_CODE = re.compile(r"ESC-[0-9A-Z]{4}-[0-9A-Z]{4}")
# Several reports share one pipeline, and the grouper joins reports of one school that say much
# the same within half an hour. Each test below therefore reports about a school of its own
# (the Telegram test has HN-BD-THCS-001), so every report opens an incident of its own.
SCHOOL_EMAIL = {
    district_school["code"]: district_school["leadership_emails"][0]
    for district in DIRECTORY["districts"]
    for district_school in district["schools"]
}
# Generous: two shared cores, six Kafka-backed processes, and a first mail that waits for the
# processors' first transactions.
DEADLINE_S = 180


@dataclass
class Channels:
    """The running pipeline and the stand-ins around it, shared by the module's tests."""

    base: str
    sink: Sink
    env: dict[str, str]
    receiver: Receiver
    apis: FakeChatApis


@pytest.fixture(scope="module")
def channels(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Channels]:
    # Module scope: `escalate up` takes a minute to start on a busy machine, so every channel
    # rides the same pipeline; the topics and groups are still this module's own.
    isolation = f"t{uuid.uuid4().hex[:10]}"
    tmp_path = tmp_path_factory.mktemp("channels")
    with webhook_receiver() as receiver, fake_chat_apis() as apis:
        directory: dict[str, Any] = yaml.safe_load(yaml.safe_dump(DIRECTORY))
        district = next(d for d in directory["districts"] if d["code"] == "HN-BD")
        district["office"]["webhooks"] = [{"url": receiver.url, "secret_env": "BD_OFFICE_HOOK"}]
        district["police"]["telegram_chat_ids"] = [DUTY_CHAT]
        directory_file = tmp_path / "directory.yaml"
        directory_file.write_text(yaml.safe_dump(directory, allow_unicode=True), "utf-8")
        extra = {
            "ESCALATE_DIRECTORY_FILE": str(directory_file),
            "BD_OFFICE_HOOK": HOOK_SECRET,
            "ESCALATE_TELEGRAM_BOT_TOKEN": TOKEN,
            "ESCALATE_TELEGRAM_SECRET_TOKEN": SECRET,
            "ESCALATE_TELEGRAM_API_BASE": apis.base,
            "ESCALATE_MESSENGER_APP_SECRET": MESSENGER_APP_SECRET,
            "ESCALATE_MESSENGER_PAGE_TOKEN": MESSENGER_PAGE_TOKEN,
            "ESCALATE_MESSENGER_VERIFY_TOKEN": MESSENGER_VERIFY_TOKEN,
            "ESCALATE_MESSENGER_API_BASE": apis.base,
            "ESCALATE_ZALO_APP_ID": ZALO_APP_ID,
            "ESCALATE_ZALO_OA_SECRET": ZALO_OA_SECRET,
            "ESCALATE_ZALO_ACCESS_TOKEN": ZALO_ACCESS_TOKEN,
            "ESCALATE_ZALO_API_BASE": apis.base,
            # Configured as its digest, as an operator following the README would.
            "ESCALATE_AUTHORITY_API_KEYS": f"{OFFICE_SYSTEM}=district_office:{hashed(OFFICE_KEY)}",
        }
        database = f"sqlite:///{tmp_path}/audit.db"
        with running_pipeline(kafka_bootstrap, isolation, database, tmp_path, extra) as (
            base,
            sink,
            env,
        ):
            yield Channels(base, sink, env, receiver, apis)


# --- helpers ------------------------------------------------------------------------------


def deliver(base: str, path: str, body: bytes, headers: dict[str, str]) -> None:
    """Deliver a platform's webhook call as the platforms do: again while the answer is 503
    (just after start the intake is still reading the conversations back)."""
    deadline = time.monotonic() + 60
    while True:
        resp = httpx.post(
            f"{base}{path}",
            content=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=30,
        )
        if resp.status_code == 200:
            return
        assert resp.status_code == 503 and time.monotonic() < deadline, resp.text
        time.sleep(0.5)


def say(base: str, update_id: int, text: str) -> None:
    body = json.dumps(update(update_id, PARENT, text), ensure_ascii=False).encode()
    deliver(base, "/v1/bots/telegram", body, {"X-Telegram-Bot-Api-Secret-Token": SECRET})


def code_told(apis: FakeChatApis, chat: int | str) -> str:
    """The tracking code the bot gave the reporter in its replies to ``chat``."""

    def told() -> str | None:
        for text in apis.texts(chat):
            if found := TRACKING_CODE.search(text):
                return found.group(0)
        return None

    code: str = wait_for(told, timeout_s=60, what=f"the tracking code told to {chat}")
    return code


def body_of(msg: Message) -> str:
    part = msg.get_body(preferencelist=("plain",))
    return "" if part is None else str(part.get_content())  # type: ignore[union-attr]


def mails_naming(sink: Sink, code: str) -> dict[str, Message]:
    """Recipient → mail, for the mails whose text names the tracking code ``code``: the one
    thing a reporter on any channel is given, so it ties their report to what the sink got."""
    with sink.lock:
        mails = list(sink.mails)
    return {rcpt: msg for rcpts, msg in mails if code in body_of(msg) for rcpt in rcpts}


def school_mail(channels: Channels, code: str, school_code: str) -> Message:
    """The mail to the school's leadership about the report ``code``: every severity tells the
    school, so whatever the classifier made of the story, this mail must come."""
    address = SCHOOL_EMAIL[school_code]
    mails = wait_for(
        lambda: (found := mails_naming(channels.sink, code)).get(address) and found,
        timeout_s=DEADLINE_S,
        what=f"the mail to {address} about {code}",
    )
    msg: Message = mails[address]
    return msg


def arrived_by(channels: Channels, code: str) -> dict[str, Any]:
    """The audit trail's ``received`` event of the report ``code``: how the report came in."""
    events = wait_for(
        lambda: [e for e in timeline(channels.env, code) if e["event"] == "received"],
        timeout_s=DEADLINE_S,
        what=f"the audit trail of {code}",
    )
    (received,) = events
    detail: dict[str, Any] = received["detail"]
    return detail


def hook_events(receiver: Receiver) -> list[WebhookEvent]:
    """What the receiver handled (once per ``webhook-id``), every test's incidents together."""
    with receiver.lock:
        payloads = list(receiver.events.values())
    return [WebhookEvent.model_validate(p) for p in payloads]


def hook_events_of(receiver: Receiver, incident_id: str, kind: str) -> list[WebhookEvent]:
    return [
        e for e in hook_events(receiver) if e.data.incident_id == incident_id and e.type == kind
    ]


def incident_status(base: str, incident_id: str, key: str = OFFICE_KEY) -> httpx.Response:
    return httpx.get(f"{base}/v1/incidents/{incident_id}", headers={"X-API-Key": key}, timeout=30)


# --- in by every channel, out to mail -----------------------------------------------------


def test_a_report_through_the_bot_reaches_mail_webhook_and_duty_chat(channels: Channels) -> None:
    base, sink, env, receiver, apis = (
        channels.base,
        channels.sink,
        channels.env,
        channels.receiver,
        channels.apis,
    )
    for n, text in enumerate(["/start", "phan chu trinh ba dinh", STORY, "có"], 1):
        say(base, n, text)
    replies = apis.wait_for(PARENT, 7, timeout_s=60)
    code = code_told(apis, PARENT)
    # Other tests' incidents reach the same receiver and duty chat: pick this report's.
    (event,) = wait_for(
        lambda: [e for e in hook_events(receiver) if code in e.data.tracking_codes],
        timeout_s=DEADLINE_S,
        what="the webhook",
    )
    incident = event.data.incident_id
    office_and_police = {"pgd@badinh.hanoi.example", "truc-ban@ca.badinh.hanoi.example"}
    wait_for(
        lambda: set(sink.for_incident(incident)) >= office_and_police,
        timeout_s=DEADLINE_S,
        what="the mails to the district office and police",
    )
    (alert,) = wait_for(
        lambda: [a for a in apis.texts(DUTY_CHAT) if code in a],
        timeout_s=DEADLINE_S,
        what="the duty chat's alert",
    )
    trail = wait_for(
        lambda: (
            {
                e["detail"].get("channel", "email")
                for e in timeline(env, incident)
                if e["event"] == "notified"
            }
            >= {"email", "webhook", "telegram"}
        ),
        timeout_s=DEADLINE_S,
        what="every channel in the audit trail",
    )
    assert trail
    # The parent: the questions, the numbers for a child in danger, the tracking code.
    assert any("113" in r and "111" in r for r in replies[4:])
    assert event.data.tracking_codes == [code]
    assert code in replies[-1]
    # The authorities, by every channel the directory gives them.
    assert (event.type, event.data.tier, event.data.severity) == (
        "incident.first_notice",
        "district_office",
        "critical",
    )
    assert event.data.immediate_danger and all(ok for _, ok in receiver.calls)
    assert alert.startswith("[KHẨN CẤP]") and code in alert and "/a/" in alert
    assert STORY not in alert


def test_a_report_through_messenger_reaches_a_mail(channels: Channels) -> None:
    psid = "6100000000000042"
    story = "Một tài khoản lạ vào lớp học trực tuyến môn Hóa của lớp 11A2 và phát nhạc ầm ĩ."

    def message(timestamp: int, text: str, signature: str | None = None) -> tuple[bytes, str]:
        body = json.dumps(messenger_callback(timestamp, psid, text), ensure_ascii=False).encode()
        return body, signature or messenger_signature(body)

    # Sent by someone without the app secret: refused by the assembled intake, not just by the
    # platform class on its own, and the bot says nothing to anyone.
    forged, _ = message(1795000000000, "/start")
    resp = httpx.post(
        f"{channels.base}/v1/bots/messenger",
        content=forged,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + "0" * 64},
        timeout=30,
    )
    assert resp.status_code == 401, resp.text
    assert channels.apis.texts(psid) == []
    # Messenger numbers nothing: a later timestamp is a later message.
    for n, text in enumerate(["/start", "nhan chinh thanh xuan", story, "không"], 1):
        body, signature = message(1795000000000 + n, text)
        deliver(channels.base, "/v1/bots/messenger", body, {"X-Hub-Signature-256": signature})
    code = code_told(channels.apis, psid)

    mail = school_mail(channels, code, "HN-TX-THPT-001")
    assert "môn Hóa của lớp 11A2" in body_of(mail)
    assert arrived_by(channels, code)["channel"] == "messenger"


def test_a_report_through_zalo_reaches_a_mail(channels: Channels) -> None:
    user = "246845883529190042"
    story = "Mấy bạn lớp 10D lập nhóm Zalo riêng để chế giễu và bôi nhọ một bạn nữ trong lớp."

    def event(timestamp: int, text: str) -> tuple[bytes, str]:
        body = json.dumps(zalo_event(timestamp, user, text), ensure_ascii=False).encode()
        return body, zalo_signature(body, timestamp)

    forged, _ = event(1795000000000, "/start")
    resp = httpx.post(
        f"{channels.base}/v1/bots/zalo",
        content=forged,
        headers={"Content-Type": "application/json", "X-ZEvent-Signature": "mac=" + "0" * 64},
        timeout=30,
    )
    assert resp.status_code == 401, resp.text
    assert channels.apis.texts(user) == []
    for n, text in enumerate(["/start", "Trường THPT Yên Hòa, Cầu Giấy", story, "không"], 1):
        body, signature = event(1795000000000 + n, text)
        deliver(channels.base, "/v1/bots/zalo", body, {"X-ZEvent-Signature": signature})
    code = code_told(channels.apis, user)

    mail = school_mail(channels, code, "HN-CG-THPT-004")
    assert "lập nhóm Zalo riêng để chế giễu" in body_of(mail)
    assert arrived_by(channels, code)["channel"] == "zalo"


def test_a_report_through_the_web_form_reaches_a_mail(channels: Channels) -> None:
    story = "Đường link Zoom và mật khẩu của lớp 4B bị đăng lên một nhóm Facebook công khai."
    with httpx.Client(base_url=channels.base, timeout=30) as browser:
        # As a browser sends it: from the form's own page (Origin), with the page's token, the
        # school by the name a parent knows rather than its code.
        resp = post_form(
            browser,
            {
                "school_code": "gia thuy long bien",
                "reporter_role": "parent",
                "description": story,
            },
            headers={"Origin": channels.base},
        )
        assert resp.status_code == 303, resp.text
        thanks = urlsplit(resp.headers["location"])
        assert thanks.path == "/report/accepted"
        (code,) = parse_qs(thanks.query)["code"]
        page = browser.get(resp.headers["location"])
        assert page.status_code == 200 and code in page.text

    mail = school_mail(channels, code, "HN-LB-TH-005")
    assert "mật khẩu của lớp 4B" in body_of(mail)
    received = arrived_by(channels, code)
    assert (received["channel"], received["school_code"]) == ("web_form", "HN-LB-TH-005")


def test_a_report_through_bulk_import_reaches_a_mail(channels: Channels, tmp_path: Path) -> None:
    story = (
        "Cuộc gọi đường dây nóng: kẻ mạo danh nhà trường nhắn tin yêu cầu phụ huynh lớp 3A "
        "chuyển khoản học phí."
    )
    hotline = tmp_path / "hotline.csv"
    # Saved from a spreadsheet: a byte-order mark, no channel column (so: bulk_import).
    with hotline.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["reporter_role", "school_code", "description", "immediate_danger"])
        writer.writerow(["other", "HN-HK-TH-002", story, "không"])
    done = subprocess.run(
        [
            *(sys.executable, "-m", "escalate.cli", "import", str(hotline)),
            *("--url", channels.base, "--api-key", KEY),
        ],
        env=channels.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (outcome,) = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    code = outcome["tracking_code"]

    mail = school_mail(channels, code, "HN-HK-TH-002")
    assert mail["X-Escalate-Incident"] == f"inc-{outcome['report_id']}"
    assert "phụ huynh lớp 3A" in body_of(mail)
    assert arrived_by(channels, code)["channel"] == "bulk_import"


# --- out to a system, and its answer back -------------------------------------------------


def test_the_district_office_system_acknowledges_through_the_authority_api(
    channels: Channels,
) -> None:
    base, receiver = channels.base, channels.receiver
    # Impersonating the school to collect money is rated high: the school and the district
    # office are told, the office by mail and by its webhook.
    filed = post(
        base,
        {
            "channel": "app",
            "reporter_role": "parent",
            "school_code": "HN-BD-TH-002",
            "description": "Có kẻ mạo danh giáo viên chủ nhiệm lớp 5C nhắn tin đòi phụ huynh "
            "chuyển khoản tiền quỹ lớp vào một tài khoản lạ.",
        },
    )
    incident = f"inc-{filed['report_id']}"
    (notice,) = wait_for(
        lambda: hook_events_of(receiver, incident, "incident.first_notice"),
        timeout_s=DEADLINE_S,
        what="the office's webhook",
    )
    assert notice.data.tier == "district_office"
    assert filed["tracking_code"] in notice.data.tracking_codes

    # Before anyone answers, the state the intake shows is open, with the office told.
    before = wait_for(
        lambda: (r := incident_status(base, incident)).status_code == 200 and r.json(),
        timeout_s=DEADLINE_S,
        what="the incident's status",
    )
    assert before["status"] == "open", before
    assert before["tiers"]["district_office"]["notified_at_step"] == 0
    assert before["tiers"]["district_office"]["acknowledged"] is None
    # A key the API does not know changes nothing.
    assert incident_status(base, incident, key="not-a-key").status_code == 401
    refused = httpx.post(
        f"{base}/v1/incidents/{incident}/ack", headers={"X-API-Key": "not-a-key"}, timeout=30
    )
    assert refused.status_code == 401

    # The office's system, having received the event, answers with the incident id it carried.
    acked = httpx.post(
        f"{base}/v1/incidents/{notice.data.incident_id}/ack",
        json={"note": "Phòng GDĐT đã liên hệ nhà trường."},
        headers={"X-API-Key": OFFICE_KEY},
        timeout=30,
    )
    assert acked.status_code == 202, acked.text
    assert acked.json()["action_id"]

    # Stored in Kafka, applied by the escalator, and back in the state the intake follows.
    def acknowledged() -> dict[str, Any] | None:
        resp = incident_status(base, incident)
        # A 503 (the intake's view reconnecting) is only "not yet".
        if resp.status_code != 200 or resp.json()["status"] != "acknowledged":
            return None
        found: dict[str, Any] = resp.json()
        return found

    after = wait_for(
        acknowledged,
        timeout_s=DEADLINE_S,
        what="the incident to show acknowledged",
    )
    ack = after["tiers"]["district_office"]["acknowledged"]
    assert (ack["by"], ack["via"]) == (OFFICE_SYSTEM, "api")
    assert after["tiers"]["school"]["acknowledged"] is None
    # The escalator wrote it to the audit trail ...
    (audited,) = wait_for(
        lambda: [e for e in timeline(channels.env, incident) if e["event"] == "acknowledged"],
        timeout_s=DEADLINE_S,
        what="the acknowledgement in the audit trail",
    )
    assert (audited["detail"]["tier"], audited["detail"]["via"]) == ("district_office", "api")
    assert audited["detail"]["recipient"] == OFFICE_SYSTEM
    # ... and told everyone told: the school by mail, the office's own system by its webhook.
    (news,) = wait_for(
        lambda: hook_events_of(receiver, incident, "incident.acknowledged"),
        timeout_s=DEADLINE_S,
        what="the acknowledgement's webhook",
    )
    assert news.data.acted_by == "district_office"
    school = SCHOOL_EMAIL["HN-BD-TH-002"]

    def school_heard() -> bool:
        with channels.sink.lock:
            mails = list(channels.sink.mails)
        return any(
            school in rcpts
            and msg["X-Escalate-Incident"] == incident
            and msg["X-Escalate-Kind"] == "acknowledged"
            for rcpts, msg in mails
        )

    wait_for(
        school_heard,
        timeout_s=DEADLINE_S,
        what="the school's mail saying the office acknowledged",
    )
    assert all(ok for _, ok in receiver.calls)
