"""Webhooks end to end (issue 12): `escalate up` with a directory that gives the Ba Đình
district office a system to call. A critical report reaches that system, signed and once,
besides the office's mail, and the audit trail records both deliveries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from schemas.webhooks import WebhookEvent
from tests.integration.test_end_to_end import (
    DIRECTORY,
    post,
    running_pipeline,
    timeline,
    wait_for,
)
from tests.services.webhook_receiver import SECRET, webhook_receiver

REPORT: dict[str, Any] = {
    "channel": "app",
    "reporter_role": "parent",
    "school_code": "HN-BD-THCS-001",
    "description": "Một người lạ nhắn tin cho con tôi, đòi gửi ảnh khỏa thân và hẹn gặp riêng.",
    "immediate_danger": True,
}


def test_a_critical_report_reaches_the_district_offices_system(
    kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    with webhook_receiver() as receiver:
        directory = yaml.safe_load(yaml.safe_dump(DIRECTORY))
        district = next(d for d in directory["districts"] if d["code"] == "HN-BD")
        district["office"]["webhooks"] = [{"url": receiver.url, "secret_env": "BD_OFFICE_HOOK"}]
        directory_file = tmp_path / "directory.yaml"
        directory_file.write_text(yaml.safe_dump(directory, allow_unicode=True), "utf-8")
        extra = {"ESCALATE_DIRECTORY_FILE": str(directory_file), "BD_OFFICE_HOOK": SECRET}
        database = f"sqlite:///{tmp_path}/audit.db"
        with running_pipeline(kafka_bootstrap, isolation, database, tmp_path, extra) as (
            base,
            sink,
            env,
        ):
            accepted = post(base, REPORT)
            incident = f"inc-{accepted['report_id']}"
            events = wait_for(lambda: list(receiver.events.values()), what="the webhook")
            mails = wait_for(lambda: sink.for_incident(incident), what="the mails")
            trail = wait_for(
                lambda: [
                    e
                    for e in timeline(env, incident)
                    if e["event"] == "notified" and e["detail"].get("channel") == "webhook"
                ],
                what="the webhook in the audit trail",
            )
    (event,) = [WebhookEvent.model_validate(e) for e in events]
    assert event.type == "incident.first_notice"
    assert (event.data.incident_id, event.data.tier, event.data.severity) == (
        incident,
        "district_office",
        "critical",
    )
    assert event.data.immediate_danger and event.data.tracking_codes == [accepted["tracking_code"]]
    assert all(verified for _, verified in receiver.calls)
    assert "pgd@badinh.hanoi.example" in mails  # the office's mail as well
    assert trail[0]["detail"]["recipient"] == receiver.url
