"""Every channel end to end (issue 12): `escalate up` on the real broker, a parent reporting
through the Telegram bot, and the pipeline telling the authorities by every channel the
directory gives them: mail into a real SMTP server, a signed webhook to the district office's
system (verified by a receiver on a real port), a short alert to the district police's duty
chat; the audit trail records each delivery."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from schemas.webhooks import WebhookEvent
from tests.integration.test_end_to_end import DIRECTORY, running_pipeline, timeline, wait_for
from tests.services.chat_apis import SECRET, TOKEN, fake_chat_apis, update
from tests.services.webhook_receiver import SECRET as HOOK_SECRET
from tests.services.webhook_receiver import webhook_receiver

PARENT = 7000042
DUTY_CHAT = -1009876543210
STORY = "Một người lạ nhắn tin cho con tôi, đòi gửi ảnh khỏa thân và hẹn gặp riêng ở cổng trường."


def say(base: str, update_id: int, text: str) -> None:
    """Deliver an update as Telegram does: again while the answer is 503 (just after start
    the intake is still reading the conversations back)."""
    deadline = time.monotonic() + 60
    while True:
        resp = httpx.post(
            f"{base}/v1/bots/telegram",
            json=update(update_id, PARENT, text),
            headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
            timeout=30,
        )
        if resp.status_code == 200:
            return
        assert resp.status_code == 503 and time.monotonic() < deadline, resp.text
        time.sleep(0.5)


def test_a_report_through_the_bot_reaches_mail_webhook_and_duty_chat(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
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
        }
        database = f"sqlite:///{tmp_path}/audit.db"
        with running_pipeline(kafka_bootstrap, isolation, database, tmp_path, extra) as (
            base,
            sink,
            env,
        ):
            for n, text in enumerate(["/start", "phan chu trinh ba dinh", STORY, "có"], 1):
                say(base, n, text)
            replies = apis.wait_for(PARENT, 7)
            events = wait_for(lambda: list(receiver.events.values()), what="the webhook")
            (event,) = [WebhookEvent.model_validate(e) for e in events]
            incident = event.data.incident_id
            mails = wait_for(lambda: sink.for_incident(incident), what="the mails")
            (alert,) = wait_for(lambda: apis.texts(DUTY_CHAT), what="the duty chat's alert")
            trail = wait_for(
                lambda: (
                    {
                        e["detail"].get("channel", "email")
                        for e in timeline(env, incident)
                        if e["event"] == "notified"
                    }
                    >= {"email", "webhook", "telegram"}
                ),
                what="every channel in the audit trail",
            )
    assert trail
    # The parent: the questions, the numbers for a child in danger, the tracking code.
    assert any("113" in r and "111" in r for r in replies[4:])
    code = event.data.tracking_codes[0]
    assert code in replies[-1]
    # The authorities, by every channel the directory gives them.
    assert (event.type, event.data.tier, event.data.severity) == (
        "incident.first_notice",
        "district_office",
        "critical",
    )
    assert event.data.immediate_danger and all(ok for _, ok in receiver.calls)
    assert "pgd@badinh.hanoi.example" in mails and "truc-ban@ca.badinh.hanoi.example" in mails
    assert alert.startswith("[KHẨN CẤP]") and code in alert and "/a/" in alert
    assert STORY not in alert
