"""The intake API against the real broker: accepted means stored; refused means nothing stored."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry

from escalate.topics_admin import ensure_topics
from producers.intake.app import create_app
from producers.intake.publisher import ReportPublisher
from schemas.reports import ReportSubmitted
from schemas.topics import REPORTS_SUBMITTED
from tests.conftest import free_port

KEY = "s3cret-key"
GOOD: dict[str, Any] = {
    "channel": "app",
    "reporter_role": "parent",
    "school_code": "HN-BD-THCS-001",
    "description": "Con tôi bị một người lạ nhắn tin đòi gửi ảnh riêng tư.",
    "contact": {"name": "Nguyễn Văn A", "phone": "0912 345 678"},
}


def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
        isolation_level="read_uncommitted",
    )
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


@pytest.fixture
def intake(kafka_bootstrap: str, isolation: str) -> Any:
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    publisher = ReportPublisher(kafka_bootstrap, prefix)
    app = create_app(publisher, {KEY: "test-app"}, CollectorRegistry())
    with TestClient(app) as client:
        yield client, REPORTS_SUBMITTED.name(prefix)
    publisher.close()


def test_accepted_report_is_on_the_topic_before_202(intake: Any, kafka_bootstrap: str) -> None:
    client, topic = intake
    resp = client.post("/v1/reports", json=GOOD, headers={"X-API-Key": KEY})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    stored = [ReportSubmitted.model_validate_json(v) for v in read_topic(kafka_bootstrap, topic)]
    assert [s.report_id for s in stored] == [body["report_id"]]
    assert stored[0].tracking_code == body["tracking_code"]
    assert stored[0].intake_client == "test-app"
    assert stored[0].report.description == GOOD["description"]


def test_text_is_stored_in_nfc(intake: Any, kafka_bootstrap: str) -> None:
    client, topic = intake
    decomposed = unicodedata.normalize("NFD", "Con tôi bị đe dọa qua tin nhắn")
    resp = client.post(
        "/v1/reports", json={**GOOD, "description": decomposed}, headers={"X-API-Key": KEY}
    )
    assert resp.status_code == 202
    stored = ReportSubmitted.model_validate_json(read_topic(kafka_bootstrap, topic)[0])
    assert stored.report.description == "Con tôi bị đe dọa qua tin nhắn"
    assert stored.report.description != decomposed


@pytest.mark.parametrize(
    ("body", "headers", "status", "expect"),
    [
        (b"{not json", {"X-API-Key": KEY}, 400, "not valid UTF-8 JSON"),
        (b"[1, 2]", {"X-API-Key": KEY}, 400, "JSON object"),
        (json.dumps(GOOD).encode(), {}, 401, "X-API-Key"),
        (json.dumps(GOOD).encode(), {"X-API-Key": "wrong"}, 401, "X-API-Key"),
        (
            json.dumps({**GOOD, "description": "x" * 70_000}).encode(),
            {"X-API-Key": KEY},
            413,
            "larger than",
        ),
    ],
    ids=["malformed", "not-object", "no-key", "wrong-key", "oversize-body"],
)
def test_refused_requests_store_nothing(
    intake: Any,
    kafka_bootstrap: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    expect: str,
) -> None:
    client, topic = intake
    resp = client.post(
        "/v1/reports", content=body, headers={"Content-Type": "application/json", **headers}
    )
    assert resp.status_code == status
    assert expect in resp.json()["error"]
    assert read_topic(kafka_bootstrap, topic) == []


def test_invalid_fields_get_one_reason_each(intake: Any, kafka_bootstrap: str) -> None:
    client, topic = intake
    bad = {
        "channel": "carrier-pigeon",
        "school_code": "HN BD",
        "description": "y" * 10_001,
        "unexpected": 1,
    }
    resp = client.post("/v1/reports", json=bad, headers={"X-API-Key": KEY})
    assert resp.status_code == 422
    fields = {f["field"]: f["reason"] for f in resp.json()["fields"]}
    assert set(fields) == {"channel", "reporter_role", "school_code", "description", "unexpected"}
    assert "required" in fields["reporter_role"]
    assert "10000" in fields["description"]
    assert "web_form" in fields["channel"]
    assert "y" * 50 not in resp.text, "the reply must not echo the report text"
    assert read_topic(kafka_bootstrap, topic) == []


def test_broker_down_gives_503_never_2xx(isolation: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    publisher = ReportPublisher(dead, f"{isolation}.", timeout_s=2)
    app = create_app(publisher, {KEY: "test-app"}, CollectorRegistry())
    with TestClient(app) as client:
        resp = client.post("/v1/reports", json=GOOD, headers={"X-API-Key": KEY})
        assert resp.status_code == 503
        assert resp.json()["retry"] is True
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert client.get("/healthz").status_code == 200
        form = client.post(
            "/report",
            data={
                "school_code": "HN-BD-THCS-001",
                "reporter_role": "student",
                "description": "Có người lạ vào lớp học online.",
            },
        )
        assert form.status_code == 503
        assert "CHƯA" in form.text


def test_web_form_posts_into_the_pipeline(intake: Any, kafka_bootstrap: str) -> None:
    client, topic = intake
    page = client.get("/report")
    assert page.status_code == 200 and 'lang="vi"' in page.text
    assert 'lang="en"' in client.get("/report?lang=en").text
    resp = client.post(
        "/report",
        data={
            "school_code": "HN-DD-THCS-003",
            "reporter_role": "anonymous",
            "description": "Mật khẩu phòng học bị lộ trên mạng xã hội.",
            "immediate_danger": "1",
        },
    )
    assert resp.status_code == 201
    assert "tracking-code" in resp.text
    stored = ReportSubmitted.model_validate_json(read_topic(kafka_bootstrap, topic)[0])
    assert stored.report.channel == "web_form"
    assert stored.report.immediate_danger is True
    assert stored.tracking_code in resp.text


def test_web_form_errors_keep_what_was_typed(intake: Any, kafka_bootstrap: str) -> None:
    client, topic = intake
    resp = client.post("/report?lang=en", data={"school_code": "", "description": "Hi"})
    assert resp.status_code == 422
    assert "Please correct" in resp.text
    assert read_topic(kafka_bootstrap, topic) == []
