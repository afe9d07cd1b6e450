"""The intake API against the real broker: accepted means stored; refused means nothing stored."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
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
from tests.services.forms import post_form

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
def counted_intake(
    kafka_bootstrap: str, isolation: str
) -> Iterator[tuple[TestClient, str, CollectorRegistry]]:
    """The intake on its own topics, with the registry its metrics are counted in."""
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    publisher = ReportPublisher(kafka_bootstrap, prefix)
    registry = CollectorRegistry()
    app = create_app(publisher, {KEY: "test-app"}, registry)
    with TestClient(app) as client:
        yield client, REPORTS_SUBMITTED.name(prefix), registry
    publisher.close()


@pytest.fixture
def intake(counted_intake: tuple[TestClient, str, CollectorRegistry]) -> Any:
    client, topic, _ = counted_intake
    return client, topic


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
        form = post_form(
            client,
            {
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
    resp = post_form(
        client,
        {
            "school_code": "HN-DD-THCS-003",
            "reporter_role": "anonymous",
            "description": "Mật khẩu phòng học bị lộ trên mạng xã hội.",
            "immediate_danger": "1",
        },
    )
    assert [r.status_code for r in resp.history] == [303]  # post/redirect/get
    assert resp.status_code == 200 and resp.url.path == "/report/accepted"
    assert "tracking-code" in resp.text
    stored = ReportSubmitted.model_validate_json(read_topic(kafka_bootstrap, topic)[0])
    assert stored.report.channel == "web_form"
    assert stored.report.immediate_danger is True
    assert stored.tracking_code in resp.text


def test_web_form_errors_keep_what_was_typed(intake: Any, kafka_bootstrap: str) -> None:
    client, topic = intake
    resp = post_form(client, {"school_code": "", "description": "Hi"}, "en")
    assert resp.status_code == 422
    assert "Please correct" in resp.text
    assert read_topic(kafka_bootstrap, topic) == []


def invalid_count(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value(
        "escalate_intake_reports_total", {"channel": "unknown", "outcome": "invalid"}
    )
    return value or 0.0


def post_report(client: TestClient, body: bytes) -> Any:
    return client.post(
        "/v1/reports",
        content=body,
        headers={"Content-Type": "application/json", "X-API-Key": KEY},
    )


@pytest.mark.parametrize(
    ("when", "says"),
    [("9999-12-31T23:59:59Z", "future"), ("1999-12-31T23:59:59+07:00", "2000")],
    ids=["year-9999", "before-2000"],
)
def test_implausible_incident_dates_are_refused(
    intake: Any, kafka_bootstrap: str, when: str, says: str
) -> None:
    # 9999-12-31 used to be accepted and then broke the mail renderer (OverflowError).
    client, topic = intake
    resp = post_report(client, json.dumps({**GOOD, "occurred_at": when}).encode())
    assert resp.status_code == 422, resp.text
    fields = {f["field"]: f["reason"] for f in resp.json()["fields"]}
    assert set(fields) == {"occurred_at"}
    assert says in fields["occurred_at"]
    assert read_topic(kafka_bootstrap, topic) == []


def test_a_date_without_offset_is_hanoi_time(intake: Any, kafka_bootstrap: str) -> None:
    client, topic = intake
    resp = post_report(client, json.dumps({**GOOD, "occurred_at": "2024-05-06T08:30:00"}).encode())
    assert resp.status_code == 202, resp.text
    stored = ReportSubmitted.model_validate_json(read_topic(kafka_bootstrap, topic)[0])
    occurred = stored.report.occurred_at
    assert occurred is not None and occurred.utcoffset() == timedelta(hours=7)
    assert occurred == datetime(2024, 5, 6, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            b'{"channel": "app", "description": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
            "nested too deeply",
        ),
        (
            json.dumps(GOOD).encode()[:-1] + b', "immediate_danger": ' + b"7" * 5_000 + b"}",
            "digits",
        ),
        (b"\xff\xfe{}", "UTF-8"),
    ],
    ids=["10000-nested-brackets", "5000-digit-number", "invalid-utf8"],
)
def test_unparseable_bodies_are_400_and_counted(
    counted_intake: tuple[TestClient, str, CollectorRegistry],
    kafka_bootstrap: str,
    body: bytes,
    says: str,
) -> None:
    client, topic, registry = counted_intake
    before = invalid_count(registry)
    resp = post_report(client, body)
    assert resp.status_code == 400, resp.text
    assert says in resp.json()["error"]
    assert invalid_count(registry) == before + 1
    assert read_topic(kafka_bootstrap, topic) == []


def test_control_characters_are_removed_before_storing(intake: Any, kafka_bootstrap: str) -> None:
    client, topic = intake
    report = {
        **GOOD,
        "description": "Người lạ\x00 vào lớp\r\nnhắn: \u202egnp.exe\u202c"
        "\x1b[31m đe dọa\x7f\x9b em",
        "contact": {"name": "Nguyễn\nVăn A\u2028\x07", "phone": "0912 345 678"},
    }
    resp = post_report(client, json.dumps(report).encode())
    assert resp.status_code == 202, resp.text
    stored = ReportSubmitted.model_validate_json(read_topic(kafka_bootstrap, topic)[0])
    assert stored.report.description == "Người lạ vào lớp\nnhắn: gnp.exe[31m đe dọa em"
    assert stored.report.contact is not None
    assert stored.report.contact.name == "Nguyễn Văn A"


def test_a_description_of_control_characters_only_is_too_short(
    intake: Any, kafka_bootstrap: str
) -> None:
    client, topic = intake
    resp = post_report(
        client, json.dumps({**GOOD, "description": "\x00\x01\u202e\x1b\x7f\x85"}).encode()
    )
    assert resp.status_code == 422, resp.text
    fields = {f["field"]: f["reason"] for f in resp.json()["fields"]}
    assert fields == {"description": "too short: at least 5 characters"}
    assert read_topic(kafka_bootstrap, topic) == []


@pytest.mark.parametrize(
    "when", [0, 1_700_000_000, 1.5, True], ids=["zero", "epoch", "float", "bool"]
)
def test_a_number_is_not_a_date(intake: Any, kafka_bootstrap: str, when: object) -> None:
    # `occurred_at: 0` was read as seconds since 1970; the contract says ISO 8601 text.
    client, topic = intake
    resp = post_report(client, json.dumps({**GOOD, "occurred_at": when}).encode())
    assert resp.status_code == 422, resp.text
    fields = {f["field"]: f["reason"] for f in resp.json()["fields"]}
    assert set(fields) == {"occurred_at"}
    assert "as text" in fields["occurred_at"]
    assert read_topic(kafka_bootstrap, topic) == []


@pytest.mark.parametrize(
    ("description", "reason"),
    [
        ("😢😢😢😢😢😢", "in words"),
        ("\u200b\u200b\u200b\u200b\u200b\u200b", "too short"),  # invisible: removed
        ("!!!!!...???", "in words"),
        ("👍 ✔️ ❗❗ 🙏", "in words"),
    ],
    ids=["emoji", "zero-width", "punctuation", "emoji-and-marks"],
)
def test_a_description_without_words_is_refused(
    intake: Any, kafka_bootstrap: str, description: str, reason: str
) -> None:
    client, topic = intake
    resp = post_report(client, json.dumps({**GOOD, "description": description}).encode())
    assert resp.status_code == 422, resp.text
    fields = {f["field"]: f["reason"] for f in resp.json()["fields"]}
    assert set(fields) == {"description"}
    assert reason in fields["description"]
    assert read_topic(kafka_bootstrap, topic) == []


@pytest.mark.parametrize(
    ("sent", "danger"),
    [("1", True), ("on", True), ("0", False), ("false", False), ("", False), (None, False)],
)
def test_the_danger_box_means_what_was_sent(
    intake: Any, kafka_bootstrap: str, sent: str | None, danger: bool
) -> None:
    # `immediate_danger=0` used to count as danger: any non-empty text is true in Python.
    client, topic = intake
    form = {
        "school_code": "HN-DD-THCS-003",
        "reporter_role": "teacher",
        "description": "Mật khẩu phòng học bị lộ trên mạng xã hội.",
    }
    if sent is not None:
        form["immediate_danger"] = sent
    resp = post_form(client, form)
    assert resp.status_code == 200 and resp.url.path == "/report/accepted", resp.text
    stored = ReportSubmitted.model_validate_json(read_topic(kafka_bootstrap, topic)[0])
    assert stored.report.immediate_danger is danger


def test_a_danger_box_value_that_means_nothing_is_refused(
    intake: Any, kafka_bootstrap: str
) -> None:
    client, topic = intake
    resp = post_form(
        client,
        {
            "school_code": "HN-DD-THCS-003",
            "reporter_role": "teacher",
            "description": "Mật khẩu phòng học bị lộ trên mạng xã hội.",
            "immediate_danger": "maybe",
        },
        "en",
    )
    assert resp.status_code == 422
    assert "tick or untick" in resp.text
    assert read_topic(kafka_bootstrap, topic) == []
