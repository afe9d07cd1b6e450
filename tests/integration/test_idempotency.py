"""Idempotency-Key retries against the real broker (issue 12): the same key and report give the
same answer and one stored report, also after an intake restart and when sent concurrently; the
same key with another report is refused."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from escalate.topics_admin import ensure_topics
from schemas.reports import ReportSubmitted
from schemas.topics import REPORTS_SUBMITTED
from tests.integration.test_report_status import read_to_end
from tests.services.intake import intake_app

pytestmark = pytest.mark.kafka

API_KEY = "idempotency-test-key"
CODE_KEY = b"tracking-code-secret-for-tests"
REPORT: dict[str, Any] = {
    "channel": "app",
    "reporter_role": "student",
    "school_code": "HN-BD-THCS-001",
    "description": "Có người lạ vào lớp học trực tuyến và đọc to mật khẩu lớp.",
}


@contextmanager
def intake(bootstrap: str, prefix: str) -> Iterator[TestClient]:
    """One intake process: its own producer and view, as after a restart."""
    with (
        intake_app(bootstrap, prefix, {API_KEY: "school-app"}, CODE_KEY) as made,
        TestClient(made.app) as client,
    ):
        yield client


@pytest.fixture
def prefix(kafka_bootstrap: str, isolation: str) -> str:
    ensure_topics(kafka_bootstrap, f"{isolation}.")
    return f"{isolation}."


def post(client: TestClient, key: str | bytes | None, report: dict[str, Any] = REPORT) -> Any:
    headers = {"X-API-Key": API_KEY} | ({"Idempotency-Key": key} if key is not None else {})
    return client.post("/v1/reports", json=report, headers=headers)


def stored(bootstrap: str, prefix: str) -> list[ReportSubmitted]:
    return [
        ReportSubmitted.model_validate_json(v)
        for v in read_to_end(bootstrap, REPORTS_SUBMITTED.name(prefix))
    ]


def test_a_retry_with_the_same_key_gets_the_same_report_and_stores_nothing_new(
    kafka_bootstrap: str, prefix: str
) -> None:
    with intake(kafka_bootstrap, prefix) as client:
        first = post(client, "retry-1")
        again = post(client, "retry-1")
        other = post(client, "retry-2")  # a new key is a new report
        unkeyed = [post(client, None), post(client, None)]  # without a key, two reports
    assert [r.status_code for r in (first, again, other, *unkeyed)] == [202] * 5
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert other.json()["report_id"] != first.json()["report_id"]
    reports = stored(kafka_bootstrap, prefix)
    assert sorted(r.report_id for r in reports) == sorted(
        r.json()["report_id"] for r in (first, other, *unkeyed)
    )
    keyed = next(r for r in reports if r.report_id == first.json()["report_id"])
    assert keyed.tracking_code == first.json()["tracking_code"]
    assert keyed.idempotency is not None
    assert "retry-1" not in keyed.model_dump_json()  # the key itself is never stored


def test_the_same_key_with_another_report_is_refused_and_stores_nothing(
    kafka_bootstrap: str, prefix: str
) -> None:
    with intake(kafka_bootstrap, prefix) as client:
        assert post(client, "k").status_code == 202
        changed = post(client, "k", {**REPORT, "description": "Một báo cáo khác hẳn."})
        bad = post(client, "khóa có dấu".encode())  # UTF-8 bytes, as a careless client sends
    assert changed.status_code == 409
    assert "different report" in changed.json()["error"]
    assert bad.status_code == 400
    assert "printable ASCII" in bad.json()["error"]
    assert len(stored(kafka_bootstrap, prefix)) == 1


def test_a_retry_after_an_intake_restart_is_still_recognised(
    kafka_bootstrap: str, prefix: str
) -> None:
    with intake(kafka_bootstrap, prefix) as client:
        first = post(client, "survives-restart")
    # A fresh process knows the claim only from reading reports.submitted back.
    with intake(kafka_bootstrap, prefix) as client:
        again = post(client, "survives-restart")
        changed = post(client, "survives-restart", {**REPORT, "school_code": "HN-BD-THCS-002"})
    assert (again.status_code, again.json()) == (202, first.json())
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert changed.status_code == 409
    assert len(stored(kafka_bootstrap, prefix)) == 1


def test_concurrent_requests_with_one_key_store_one_report(
    kafka_bootstrap: str, prefix: str
) -> None:
    with intake(kafka_bootstrap, prefix) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(client, "double-tap"), range(8)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["tracking_code"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 7
    assert len(stored(kafka_bootstrap, prefix)) == 1
