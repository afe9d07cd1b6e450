"""Reporters following their report up by tracking code: status, the page, additions, limits.

No broker here: the app runs with the real in-memory index behind a fake view, and a publisher
that records what it would have stored.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from producers.intake.app import create_app
from producers.intake.incidents import (
    ReportStatus,
    StatusIndex,
    normalise_tracking_code,
    status_of,
)
from producers.intake.ratelimit import ClientLimiter, client_key, share_of_rate
from producers.intake.status import LOOKUP_OUTCOMES
from schemas.common import Tier
from schemas.escalation import EscalationState, ReviewState
from schemas.ids import incident_id_for_report, new_tracking_code
from schemas.reports import ReportIn, ReportSubmitted
from tests.action_support import RECEIVED, SCHOOL, make_state
from tests.fakes import FakeReportPublisher, FakeReportView
from tests.services.forms import post_form

KEY = "app-key"
CODE = "ESC-7K3M-9Q2X"
LATER_CODE = "ESC-AB12-CD34"
INCIDENT = "inc-first"
ADDITION = "Hôm nay người đó lại nhắn tin cho em qua Zalo, đòi gặp riêng sau giờ học."


def state_for(
    incident_id: str = INCIDENT,
    codes: tuple[str, ...] = (CODE,),
    *,
    acknowledged: bool = False,
    resolved: bool = False,
    review: ReviewState | None = None,
    updated_at: datetime = RECEIVED + timedelta(minutes=30),
) -> EscalationState:
    base = make_state(
        incident_id, acknowledged_by=Tier.school if acknowledged else None, resolved=resolved
    )
    assert base.incident is not None
    incident = base.incident.model_copy(update={"tracking_codes": list(codes)})
    return base.model_copy(
        update={"incident": incident, "review": review, "updated_at": updated_at}
    )


def submitted(
    code: str, report_id: str = "r-late", follow_up_of: str | None = None
) -> ReportSubmitted:
    return ReportSubmitted(
        report_id=report_id,
        tracking_code=code,
        received_at=RECEIVED,
        intake_client="test",
        follow_up_of=follow_up_of,
        report=ReportIn(
            channel="app",
            reporter_role="parent",
            school_code="HN-CG-THCS-002",
            description="Có người lạ vào lớp học trực tuyến.",
        ),
    )


OPEN_REVIEW = ReviewState(reason="needs_review", opened_at=RECEIVED, due=RECEIVED)
ANSWERED_REVIEW = ReviewState(
    reason="needs_review", opened_at=RECEIVED, reviewed_by="desk", reviewed_at=RECEIVED
)


# ---- status from the escalator's state ----


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (None, ReportStatus.received),
        (state_for(), ReportStatus.received),
        (state_for(review=OPEN_REVIEW), ReportStatus.under_review),
        (state_for(review=ANSWERED_REVIEW), ReportStatus.received),
        (state_for(acknowledged=True), ReportStatus.acknowledged),
        (state_for(acknowledged=True, review=OPEN_REVIEW), ReportStatus.acknowledged),
        (state_for(resolved=True, review=OPEN_REVIEW), ReportStatus.resolved),
        (state_for(acknowledged=True, resolved=True), ReportStatus.resolved),
    ],
    ids=[
        "no-state",
        "open",
        "review-open",
        "review-answered",
        "acknowledged",
        "acknowledged-review-open",
        "resolved-review-open",
        "acknowledged-then-resolved",
    ],
)
def test_status_follows_the_state(state: EscalationState | None, expected: ReportStatus) -> None:
    assert status_of(state) is expected


# ---- tracking codes as reporters type them ----


@pytest.mark.parametrize(
    "typed",
    [
        "ESC-7K3M-9Q2X",
        "esc-7k3m-9q2x",
        "ESC7K3M9Q2X",
        "esc7k3m9q2x",
        "7K3M-9Q2X",
        "7k3m9q2x",
        "  esc 7k3m 9q2x ",
        "ESC\u20137K3M\u20139Q2X",  # en dashes a phone keyboard puts in
        "ＥＳＣ－７Ｋ３Ｍ－９Ｑ２Ｘ",  # full-width
    ],
)
def test_codes_are_normalised(typed: str) -> None:
    assert normalise_tracking_code(typed) == CODE


def test_look_alike_letters_are_read_as_the_digits_they_resemble() -> None:
    assert normalise_tracking_code("esc-1o0l-ii00") == "ESC-1001-1100"


@pytest.mark.parametrize(
    "typed",
    ["", "ESC", "ESC-7K3M-9Q2", "ESC-7K3M-9Q2XX", "ESC-7K3M-9Q2U", "ESC-7K3M-9Q2*", "x" * 500],
)
def test_what_cannot_be_a_code_is_refused(typed: str) -> None:
    assert normalise_tracking_code(typed) is None


def test_issued_codes_are_already_normal() -> None:
    for _ in range(200):
        code = new_tracking_code()
        assert normalise_tracking_code(code) == code
        assert normalise_tracking_code(code.lower().replace("-", "")) == code


# ---- the index: codes from states and from submitted reports ----


def test_a_code_known_only_from_its_submission_is_received() -> None:
    index = StatusIndex()
    index.note_submitted(submitted(CODE, report_id="r-1"))
    found = index.find_code(CODE.lower())
    assert found is not None
    assert found.status is ReportStatus.received
    assert found.incident_id == incident_id_for_report("r-1")
    assert found.school_code == "HN-CG-THCS-002"
    assert found.updated_at == RECEIVED


def test_a_state_listing_the_code_gives_its_status() -> None:
    index = StatusIndex()
    index.note_submitted(submitted(CODE, report_id="first"))
    index.apply_state(state_for("inc-first", (CODE,), acknowledged=True))
    found = index.find_code(CODE)
    assert found is not None
    assert (found.status, found.incident_id) == (ReportStatus.acknowledged, "inc-first")
    assert found.updated_at == RECEIVED + timedelta(minutes=30)
    assert found.school_code == SCHOOL


@pytest.mark.parametrize("state_first", [False, True], ids=["report-first", "state-first"])
def test_a_code_that_joined_another_incident_resolves_to_it(state_first: bool) -> None:
    """Grouping appends a later report's code to the incident it joined; read in either order
    (the two topics are not ordered against each other), the state wins."""
    index = StatusIndex()
    later = submitted(LATER_CODE, report_id="r-later")
    state = state_for(INCIDENT, (CODE, LATER_CODE), review=OPEN_REVIEW)
    if state_first:
        index.apply_state(state)
        index.note_submitted(later)
    else:
        index.note_submitted(later)
        assert index.find_code(LATER_CODE).incident_id == "inc-r-later"  # type: ignore[union-attr]
        index.apply_state(state)
    found = index.find_code(LATER_CODE)
    assert found is not None
    assert found.incident_id == INCIDENT
    assert found.status is ReportStatus.under_review


def test_an_addition_belongs_to_the_incident_it_follows_up() -> None:
    index = StatusIndex()
    index.apply_state(state_for(INCIDENT, (CODE,), acknowledged=True))
    index.note_submitted(submitted(LATER_CODE, report_id="r-add", follow_up_of=INCIDENT))
    found = index.find_code(LATER_CODE)
    assert found is not None
    assert (found.incident_id, found.status) == (INCIDENT, ReportStatus.acknowledged)


def test_a_forgotten_incident_takes_its_codes_along() -> None:
    index = StatusIndex()
    index.apply_state(state_for(INCIDENT, (CODE, LATER_CODE)))
    index.forget(INCIDENT)
    assert index.find_code(CODE) is None
    assert index.find_code(LATER_CODE) is None
    assert index.get(INCIDENT) is None


def test_codes_not_yet_in_a_state_are_bounded_oldest_first() -> None:
    index = StatusIndex(max_pending_codes=2)
    index.apply_state(state_for(INCIDENT, (CODE,)))
    codes = ["ESC-0000-0001", "ESC-0000-0002", "ESC-0000-0003"]
    for n, code in enumerate(codes):
        index.note_submitted(submitted(code, report_id=f"r-{n}"))
    assert index.find_code(codes[0]) is None
    assert index.find_code(codes[1]) is not None
    assert index.find_code(codes[2]) is not None
    assert index.find_code(CODE) is not None, "codes a state lists are never evicted"
    assert index.code_count() == 3


# ---- rate limits per address ----


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        (None, "unknown"),
    ],
)
def test_clients_are_keyed_by_address_and_ipv6_by_64(host: str | None, key: str) -> None:
    assert client_key(host) == key


@pytest.mark.parametrize(
    ("rate", "processes", "share"),
    [
        ("30/minute", 1, "30 per 1 minute"),
        ("30/minute", 4, "7 per 1 minute"),
        ("10/hour", 3, "3 per 1 hour"),
        ("5/10 minutes", 2, "2 per 10 minute"),
        ("3/hour", 8, "1 per 1 hour"),  # never none at all: a reporter can still look once
    ],
)
def test_intake_processes_counting_alone_each_get_a_share_of_the_limit(
    rate: str, processes: int, share: str
) -> None:
    shared = share_of_rate(rate, processes)
    assert ClientLimiter("lookups", shared).rate == share


# ---- the app ----


class Intake:
    def __init__(self, **kwargs: Any) -> None:
        self.view = FakeReportView()
        self.publisher = FakeReportPublisher()
        self.registry = CollectorRegistry()
        self.app = create_app(
            self.publisher,  # type: ignore[arg-type]
            {KEY: "test-app"},
            self.registry,
            status_view=self.view,  # type: ignore[arg-type]
            **kwargs,
        )

    def client(self, host: str = "192.0.2.10") -> TestClient:
        return TestClient(self.app, client=(host, 50000))

    def lookups(self, outcome: str) -> float:
        value = self.registry.get_sample_value(
            "escalate_report_status_lookups_total", {"outcome": outcome}
        )
        assert value is not None
        return value


@pytest.fixture
def intake() -> Iterator[Intake]:
    made = Intake()
    made.view.index.apply_state(state_for(INCIDENT, (CODE,), acknowledged=True))
    yield made


def test_lookup_by_api_says_status_and_nothing_else(intake: Intake) -> None:
    with intake.client() as client:
        resp = client.get("/v1/reports/esc7k3m9q2x")
    assert resp.status_code == 200
    assert resp.json() == {
        "tracking_code": CODE,
        "status": "acknowledged",
        "updated_at": (RECEIVED + timedelta(minutes=30)).isoformat(),
    }
    assert resp.headers["cache-control"] == "no-store"
    for secret in (INCIDENT, SCHOOL, "critical", "school", "bgh@"):
        assert secret not in resp.text
    assert intake.lookups("found") == 1


def test_all_outcomes_are_exported_from_the_start() -> None:
    made = Intake()
    for outcome in LOOKUP_OUTCOMES:
        assert made.lookups(outcome) == 0


def test_unknown_code_is_404_with_a_reason(intake: Intake) -> None:
    with intake.client() as client:
        for code in ("ESC-ZZZZ-ZZZZ", "not-a-code"):
            resp = client.get(f"/v1/reports/{code}")
            assert resp.status_code == 404
            assert "no report with this tracking code" in resp.json()["error"]
    assert intake.lookups("unknown") == 2


def test_not_ready_is_503_until_the_view_caught_up(intake: Intake) -> None:
    intake.view.is_ready = False
    with intake.client() as client:
        resp = client.get(f"/v1/reports/{CODE}")
        assert resp.status_code == 503
        assert resp.json()["retry"] is True
        assert "loading" in resp.json()["error"]
        page = client.get("/report/status", params={"code": CODE})
        assert page.status_code == 503
    assert intake.lookups("not_ready") == 2


def test_without_a_view_lookups_are_503_not_500() -> None:
    app = create_app(FakeReportPublisher(), {}, CollectorRegistry())  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.get(f"/v1/reports/{CODE}").status_code == 503
        assert client.get("/report/status", params={"code": CODE}).status_code == 503


def test_lookups_are_limited_per_address_with_retry_after() -> None:
    made = Intake(lookup_rate="3/minute")
    with made.client("192.0.2.1") as client:
        for _ in range(3):
            assert client.get(f"/v1/reports/{CODE}").status_code == 404
        resp = client.get(f"/v1/reports/{CODE}")
        assert resp.status_code == 429
        wait = int(resp.headers["retry-after"])
        assert 1 <= wait <= 60
        assert resp.json()["retry_after"] == wait
        assert "too many" in resp.json()["error"]
        page = client.get("/report/status", params={"code": CODE})
        assert page.status_code == 429
        assert page.headers["retry-after"]
    with made.client("192.0.2.2") as other:
        assert other.get(f"/v1/reports/{CODE}").status_code == 404
    assert made.lookups("limited") == 2


def test_ipv6_clients_are_limited_per_64() -> None:
    made = Intake(lookup_rate="2/minute")
    with made.client("2001:db8:5:6::1") as client:
        assert client.get(f"/v1/reports/{CODE}").status_code == 404
        assert client.get(f"/v1/reports/{CODE}").status_code == 404
    # Another address of the same /64 is the same client.
    with made.client("2001:db8:5:6:dead:beef:0:1") as same:
        assert same.get(f"/v1/reports/{CODE}").status_code == 429
    with made.client("2001:db8:5:7::1") as neighbour:
        assert neighbour.get(f"/v1/reports/{CODE}").status_code == 404


def test_a_code_just_issued_can_be_looked_up_at_once(intake: Intake) -> None:
    report = {
        "channel": "app",
        "reporter_role": "parent",
        "school_code": SCHOOL,
        "description": "Con tôi bị người lạ nhắn tin đòi ảnh riêng tư.",
    }
    with intake.client() as client:
        accepted = client.post("/v1/reports", json=report, headers={"X-API-Key": KEY})
        assert accepted.status_code == 202
        code = accepted.json()["tracking_code"]
        resp = client.get(f"/v1/reports/{code}")
    assert resp.status_code == 200
    assert resp.json()["status"] == "received"


# ---- the page ----


@pytest.mark.parametrize(
    ("lang", "label", "switch"),
    [("vi", "Đã có cơ quan nhận xử lý", "English"), ("en", "Taken in hand", "Tiếng Việt")],
)
def test_status_page_in_both_languages(intake: Intake, lang: str, label: str, switch: str) -> None:
    with intake.client() as client:
        resp = client.get("/report/status", params={"code": "7k3m-9q2x", "lang": lang})
    assert resp.status_code == 200
    html = resp.text
    assert f'<html lang="{lang}">' in html
    assert label in html
    assert CODE in html
    assert switch in html
    assert 'name="description"' in html and 'action="/report/status?lang=' in html
    assert resp.headers["cache-control"] == "no-store"
    assert "noindex" in resp.headers["x-robots-tag"]
    for secret in (INCIDENT, SCHOOL, "critical", "bgh@"):
        assert secret not in html


def test_page_without_a_code_is_the_form_and_costs_no_lookup(intake: Intake) -> None:
    with intake.client() as client:
        for lang, text in (("vi", "Mã theo dõi"), ("en", "Tracking code")):
            resp = client.get("/report/status", params={"lang": lang})
            assert resp.status_code == 200
            assert text in resp.text
            assert 'name="code"' in resp.text
    assert sum(intake.lookups(o) for o in LOOKUP_OUTCOMES) == 0


def test_unknown_code_page_is_404_and_escapes_what_was_typed(intake: Intake) -> None:
    typed = '<script>alert("x")</script>'
    with intake.client() as client:
        resp = client.get("/report/status", params={"code": typed, "lang": "en"})
    assert resp.status_code == 404
    assert "<script>" not in resp.text
    assert "&lt;script&gt;" in resp.text
    assert "No report with this code" in resp.text


def test_thank_you_page_links_to_the_status_page(intake: Intake) -> None:
    form = {
        "school_code": SCHOOL,
        "reporter_role": "parent",
        "description": "Có người lạ vào lớp học trực tuyến và nói những lời tục tĩu.",
    }
    with intake.client() as client:
        resp = post_form(client, form, "en")
        # post/redirect/get: the thank-you page is a page of its own
        assert [r.status_code for r in resp.history] == [303]
        assert resp.status_code == 200
        code = re.search(r'id="tracking-code">([^<]+)<', resp.text)
        assert code is not None
        link = re.search(r'id="status-link" href="([^"]+)"', resp.text)
        assert link is not None
        href = link.group(1).replace("&amp;", "&")
        assert href == f"/report/status?code={code.group(1)}&lang=en"
        status = client.get(href)
    assert status.status_code == 200
    assert "Received" in status.text


# ---- adding information ----


def addition(**fields: str) -> dict[str, str]:
    return {"code": CODE.lower(), "description": ADDITION, **fields}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"description": ""}, "What else should we know: too short"),
        ({"description": "abc"}, "too short"),
        ({"description": "x" * 10_001}, "too long"),
        ({"evidence_url": "not a link"}, "Evidence link: not in the expected format"),
        ({"contact_email": "not-an-email"}, "Your contact"),
        ({"contact_phone": "call me maybe"}, "Your contact"),
    ],
    ids=["empty", "short", "long", "bad-url", "bad-email", "bad-phone"],
)
def test_addition_is_validated_like_a_report(
    intake: Intake, fields: dict[str, str], reason: str
) -> None:
    with intake.client() as client:
        resp = client.post("/report/status?lang=en", data=addition(**fields))
    assert resp.status_code == 422
    assert 'class="errors"' in resp.text
    assert reason in resp.text
    assert intake.publisher.published == []


def test_addition_errors_keep_what_was_typed_escaped(intake: Intake) -> None:
    with intake.client() as client:
        resp = client.post(
            "/report/status",
            data=addition(description="<b>", contact_name='"><img src=x onerror=alert(1)>'),
        )
    assert resp.status_code == 422
    assert "Vui lòng sửa các mục sau" in resp.text
    assert "<img" not in resp.text and "&lt;b&gt;" in resp.text


def test_addition_is_published_as_a_follow_up_of_the_incident(intake: Intake) -> None:
    with intake.client() as client:
        resp = client.post(
            "/report/status?lang=en",
            data=addition(
                evidence_url="https://zalo.me/g/abcdef",
                contact_phone="0912 345 678",
                immediate_danger="1",
            ),
        )
        assert resp.status_code == 201, resp.text
        (stored,) = intake.publisher.published
        assert isinstance(stored, ReportSubmitted)
        assert stored.follow_up_of == INCIDENT
        assert stored.report.school_code == SCHOOL
        assert stored.report.channel.value == "web_form"
        assert stored.intake_client == "web_form"
        assert stored.report.description == ADDITION
        assert stored.report.immediate_danger is True
        assert [str(u) for u in stored.report.evidence_urls] == ["https://zalo.me/g/abcdef"]
        assert stored.report.contact is not None
        assert stored.report.contact.phone == "0912 345 678"
        assert stored.tracking_code != CODE
        assert stored.tracking_code in resp.text
        assert "Information added" in resp.text and 'href="tel:113"' in resp.text
        # The addition's own code shows the incident's status at once.
        again = client.get(f"/v1/reports/{stored.tracking_code}")
    assert again.json()["status"] == "acknowledged"


def test_addition_with_an_unknown_code_is_404(intake: Intake) -> None:
    with intake.client() as client:
        resp = client.post("/report/status", data=addition(code="ESC-ZZZZ-ZZZZ"))
    assert resp.status_code == 404
    assert "Không tìm thấy" in resp.text
    assert intake.publisher.published == []


def test_addition_not_stored_is_503_and_keeps_the_text(intake: Intake) -> None:
    intake.publisher.fail = True
    with intake.client() as client:
        resp = client.post("/report/status?lang=en", data=addition())
    assert resp.status_code == 503
    assert "NOT been sent" in resp.text
    assert ADDITION in resp.text


def test_additions_are_rate_limited() -> None:
    made = Intake(follow_up_rate="2/hour")
    made.view.index.apply_state(state_for())
    with made.client() as client:
        assert client.post("/report/status", data=addition()).status_code == 201
        assert client.post(f"/v1/reports/{CODE}/updates", json=api_addition()).status_code == 202
        resp = client.post("/report/status", data=addition())
        assert resp.status_code == 429
        assert int(resp.headers["retry-after"]) >= 1
        assert client.post(f"/v1/reports/{CODE}/updates", json=api_addition()).status_code == 429
    assert len(made.publisher.published) == 2


def api_addition(**fields: Any) -> dict[str, Any]:
    return {"channel": "app", "reporter_role": "parent", "description": ADDITION, **fields}


def test_api_addition_answers_202_with_its_own_code(intake: Intake) -> None:
    with intake.client() as client:
        resp = client.post(f"/v1/reports/{CODE}/updates", json=api_addition())
    assert resp.status_code == 202
    body = resp.json()
    (stored,) = intake.publisher.published
    assert isinstance(stored, ReportSubmitted)
    assert body == {"report_id": stored.report_id, "tracking_code": stored.tracking_code}
    assert stored.follow_up_of == INCIDENT
    assert stored.report.school_code == SCHOOL
    assert stored.intake_client == "status_api"


@pytest.mark.parametrize(
    ("body", "status", "fields"),
    [
        (api_addition(school_code="HN-X-1"), 422, {"school_code"}),
        (api_addition(description="hi"), 422, {"description"}),
        ({"description": ADDITION}, 422, {"channel", "reporter_role"}),
        (api_addition(evidence_urls=["javascript:alert(1)"]), 422, {"evidence_urls.0"}),
        (api_addition(occurred_at="9999-12-31T23:59:59Z"), 422, {"occurred_at"}),
        (api_addition(extra={"a": [1, 2]}), 422, {"extra"}),
        ([1, 2], 400, None),
        ("just text", 400, None),
        (None, 400, None),
    ],
    ids=[
        "school-code",
        "short",
        "missing",
        "bad-url",
        "future",
        "unknown-field",
        "list",
        "string",
        "empty",
    ],
)
def test_api_addition_refusals_have_reasons(
    intake: Intake, body: Any, status: int, fields: set[str] | None
) -> None:
    with intake.client() as client:
        resp = client.post(f"/v1/reports/{CODE}/updates", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]
    if fields is not None:
        assert {f["field"] for f in resp.json()["fields"]} == fields
    assert intake.publisher.published == []


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"\xff\xfe", b"[" * 100_000, b'{"description": 1' + b"0" * 5000 + b"}"],
    ids=["malformed", "not-utf8", "deep", "long-number"],
)
def test_api_addition_never_500(intake: Intake, raw: bytes) -> None:
    with intake.client() as client:
        resp = client.post(
            f"/v1/reports/{CODE}/updates",
            content=raw,
            headers={"Content-Type": "application/json"},
        )
    assert resp.status_code in (400, 413)


def test_api_addition_to_unknown_code_is_404(intake: Intake) -> None:
    with intake.client() as client:
        resp = client.post("/v1/reports/ESC-ZZZZ-ZZZZ/updates", json=api_addition())
    assert resp.status_code == 404
    assert intake.publisher.published == []


def test_codes_and_report_text_stay_out_of_the_log(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with intake.client() as client:
        client.get(f"/v1/reports/{CODE}")
        client.get("/report/status", params={"code": CODE})
        client.post("/report/status", data=addition())
        client.post(f"/v1/reports/{CODE}/updates", json=api_addition())
    issued = [s.tracking_code for s in intake.publisher.published]  # type: ignore[attr-defined]
    # httpx (the test client) logs the URLs it requests; uvicorn's access log is off in
    # production for the same reason. What the intake itself logs is what counts.
    for record in (r for r in caplog.records if not r.name.startswith("httpx")):
        text = record.getMessage()
        for code in (CODE, *issued):
            assert code not in text and code.replace("ESC-", "") not in text
        assert ADDITION not in text


# ---- timing: the answer must not tell which codes exist ----


def _timed(client: TestClient, url: str) -> float:
    start = time.perf_counter()
    client.get(url)
    return time.perf_counter() - start


@pytest.mark.parametrize(
    "template",
    ["/v1/reports/{code}", "/report/status?code={code}"],
    ids=["api", "page"],
)
def test_known_and_unknown_codes_take_the_same_time(template: str) -> None:
    """Medians of many lookups of known and unknown codes through the app, in one run. Known
    and unknown alternate request by request (each pair in turn order), so drift from other
    processes or the garbage collector falls on both alike; the ratio must be noise."""
    made = Intake(lookup_rate="1000000/minute")
    # A realistic index: many incidents, half of them acknowledged.
    known = [new_tracking_code() for _ in range(2000)]
    for n, code in enumerate(known):
        made.view.index.apply_state(state_for(f"inc-{n}", (code,), acknowledged=n % 2 == 0))
    unknown = [c for c in (new_tracking_code() for _ in range(200)) if c not in known]
    hits: list[float] = []
    misses: list[float] = []
    with made.client() as client:
        for code in known[:100] + unknown[:100]:  # warm-up, not measured
            client.get(template.format(code=code))
        for n in range(1000):
            hit = template.format(code=known[(n * 7) % len(known)])
            miss = template.format(code=unknown[n % len(unknown)])
            if n % 2:
                hits.append(_timed(client, hit))
                misses.append(_timed(client, miss))
            else:
                misses.append(_timed(client, miss))
                hits.append(_timed(client, hit))
    ratio = statistics.median(hits) / statistics.median(misses)
    print(
        f"timing {template}: known {statistics.median(hits) * 1e6:.0f} µs, unknown "
        f"{statistics.median(misses) * 1e6:.0f} µs, ratio {ratio:.3f}"
    )
    assert 0.85 < ratio < 1.15, ratio
