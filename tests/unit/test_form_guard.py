"""The anonymous web form against forged and flooding posts (producers/intake/form_guard.py):
cross-site posts and posts without a valid token store nothing and give the reporter the form
back with what they wrote; one token files one report; too many posts from one address wait."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from producers.intake.app import create_app
from producers.intake.form_guard import FIELD, FormGuard, Refusal
from producers.intake.idempotency import Remembered
from producers.intake.incidents import StatusIndex
from schemas.reports import ReportSubmitted
from tests.fakes import FakeReportPublisher
from tests.services.forms import form_token, post_form, token_in

FORM = {
    "school_code": "HN-BD-THCS-001",
    "reporter_role": "student",
    "description": "Có người lạ vào lớp học trực tuyến và đòi số điện thoại của các bạn.",
}


class Index(StatusIndex):
    """The status view the intake reads claims from, caught up from the start."""

    def ready(self) -> bool:
        return True

    def find_claim(self, key_id: str, now: datetime) -> Remembered | None:
        return self.claims.find(key_id, now)


@pytest.fixture
def publisher() -> FakeReportPublisher:
    return FakeReportPublisher()


def make_client(publisher: FakeReportPublisher, **kw: Any) -> TestClient:
    app = create_app(
        publisher,  # type: ignore[arg-type]
        {},
        CollectorRegistry(),
        status_view=Index(),
        **kw,
    )
    return TestClient(app)


@pytest.fixture
def client(publisher: FakeReportPublisher) -> Iterator[TestClient]:
    with make_client(publisher) as test_client:
        yield test_client


def stored(publisher: FakeReportPublisher) -> list[ReportSubmitted]:
    return [r for r in publisher.published if isinstance(r, ReportSubmitted)]


def test_a_post_with_the_pages_token_is_filed(
    client: TestClient, publisher: FakeReportPublisher
) -> None:
    resp = post_form(client, FORM, "en", headers={"Sec-Fetch-Site": "same-origin"})
    assert resp.status_code == 200 and resp.url.path == "/report/accepted"
    assert len(stored(publisher)) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Origin": "https://evil.example"},  # a browser without Sec-Fetch-Site
        {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is another site here
    ],
    ids=["cross-site", "foreign-origin", "same-site"],
)
def test_a_post_from_another_site_stores_nothing_and_gives_the_form_back(
    client: TestClient, publisher: FakeReportPublisher, headers: dict[str, str]
) -> None:
    token = form_token(client, "en")
    resp = client.post("/report?lang=en", data={FIELD: token, **FORM}, headers=headers)
    assert resp.status_code == 403
    assert "another website" in resp.text
    assert "đòi số điện thoại" in resp.text  # what was typed is still there
    assert token_in(resp.text) != token  # with a fresh token: one press sends it
    assert stored(publisher) == []


@pytest.mark.parametrize("token", [None, "", "not-a-token", "eyJ0eXAi.forged.signature"], ids=str)
def test_a_post_without_a_valid_token_stores_nothing_and_keeps_the_text(
    client: TestClient, publisher: FakeReportPublisher, token: str | None
) -> None:
    data = dict(FORM) if token is None else {FIELD: token, **FORM}
    resp = client.post("/report?lang=en", data=data)
    assert resp.status_code == 403
    assert "nothing was stored" in resp.text
    assert "đòi số điện thoại" in resp.text
    assert stored(publisher) == []
    # The fresh token in the page the reporter got back files the report.
    again = client.post("/report?lang=en", data={FIELD: token_in(resp.text), **FORM})
    assert again.status_code == 200 and again.url.path == "/report/accepted"
    assert len(stored(publisher)) == 1


def test_a_token_signed_with_another_key_or_expired_is_refused() -> None:
    guard = FormGuard("key-one", max_age_s=1)
    other = FormGuard("key-two")
    assert guard.judge({}, other.issue()).refusal is Refusal.bad_token
    token = guard.issue()
    assert guard.judge({}, token).nonce
    time.sleep(2.1)
    assert guard.judge({}, token).refusal is Refusal.expired_token
    # Rotating the key: tokens signed with the previous one still count.
    rotated = FormGuard("key-three", previous_keys=["key-one"])
    assert rotated.judge({}, guard.issue()).nonce


def test_the_same_form_sent_twice_files_one_report(
    client: TestClient, publisher: FakeReportPublisher
) -> None:
    token = form_token(client, "en")
    first = client.post("/report?lang=en", data={FIELD: token, **FORM})
    second = client.post("/report?lang=en", data={FIELD: token, **FORM})
    assert first.url == second.url  # the same thank-you page, the same tracking code
    assert len(stored(publisher)) == 1


def test_the_same_form_sent_again_with_other_text_asks_before_a_second_report(
    client: TestClient, publisher: FakeReportPublisher
) -> None:
    token = form_token(client, "en")
    client.post("/report?lang=en", data={FIELD: token, **FORM})
    code = stored(publisher)[0].tracking_code
    edited = {**FORM, "description": FORM["description"] + " Em ấy còn gửi ảnh."}
    resp = client.post("/report?lang=en", data={FIELD: token, **edited})
    assert resp.status_code == 409
    assert code in resp.text and "Em ấy còn gửi ảnh." in resp.text
    assert len(stored(publisher)) == 1
    confirmed = client.post("/report?lang=en", data={FIELD: token_in(resp.text), **edited})
    assert confirmed.url.path == "/report/accepted"
    assert len(stored(publisher)) == 2


def test_a_flood_from_one_address_waits_and_loses_no_text(publisher: FakeReportPublisher) -> None:
    with make_client(publisher, form_rate="3/minute") as client:
        answers = [post_form(client, FORM, "en") for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    limited = answers[-1]
    assert int(limited.headers["Retry-After"]) >= 1
    assert "đòi số điện thoại" in limited.text and "113" in limited.text
    assert len(stored(publisher)) == 3


def test_the_form_page_is_never_cached(client: TestClient) -> None:
    assert client.get("/report").headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "path", ["/report", "/report?lang=en", "/report/status", "/v1/schools?q=x", "/healthz"]
)
def test_every_page_and_answer_carries_the_security_headers(client: TestClient, path: str) -> None:
    headers = client.get(path).headers
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    policy = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "base-uri 'none'" in policy
    assert "unsafe-eval" not in policy and "script-src *" not in policy
    assert "Strict-Transport-Security" not in headers  # plain HTTP: the proxy's business


def test_a_page_keeps_its_own_stricter_headers_and_https_adds_hsts(
    publisher: FakeReportPublisher,
) -> None:
    with make_client(publisher, public_url="https://baocao.example.vn") as client:
        page = client.get("/report/status", params={"code": "ESC-AAAA-BBBB"})
        assert page.headers["Cache-Control"] == "no-store"
        assert page.headers["X-Robots-Tag"] == "noindex, nofollow"
        assert page.headers["Content-Security-Policy"].count("default-src") == 1
        assert page.headers["Strict-Transport-Security"].startswith("max-age=")
