"""The web form takes a school's name (producers/intake/app.py with a SchoolFinder): a clear
name is filed under its code, an ambiguous one is asked about without any script, an unknown
one still gets the report in; /v1/schools answers the suggestions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from producers.intake.app import create_app
from producers.intake.schools import UNKNOWN_SCHOOL, SchoolFinder, looks_like_code
from schemas.reports import ReportSubmitted
from tests.fakes import FakeReportPublisher
from tests.services.forms import post_form
from tests.unit.test_schools import CITY

DESCRIPTION = "Có người lạ vào lớp học trực tuyến và nhắn tin riêng cho các em."


@pytest.fixture
def publisher() -> FakeReportPublisher:
    return FakeReportPublisher()


@pytest.fixture
def client(publisher: FakeReportPublisher) -> Iterator[TestClient]:
    app = create_app(
        publisher,  # type: ignore[arg-type]
        {},
        CollectorRegistry(),
        schools=SchoolFinder(CITY),
    )
    with TestClient(app) as test_client:
        yield test_client


def post(client: TestClient, school: str, **extra: str) -> object:
    return post_form(client, {"school_code": school, "description": DESCRIPTION, **extra}, "en")


def stored(publisher: FakeReportPublisher) -> list[ReportSubmitted]:
    return [r for r in publisher.published if isinstance(r, ReportSubmitted)]


def test_a_name_without_accents_is_filed_under_the_schools_code(
    client: TestClient, publisher: FakeReportPublisher
) -> None:
    resp = post(client, "thcs phan chu trinh")
    assert resp.status_code == 200 and resp.url.path == "/report/accepted"  # type: ignore[attr-defined]
    assert [r.report.school_code for r in stored(publisher)] == ["BD-2"]
    assert stored(publisher)[0].report.description == DESCRIPTION


def test_an_ambiguous_name_is_asked_about_and_the_choice_files_it(
    client: TestClient, publisher: FakeReportPublisher
) -> None:
    resp = post(client, "Nguyễn Trãi")
    assert resp.status_code == 422  # type: ignore[attr-defined]
    page = resp.text  # type: ignore[attr-defined]
    assert 'id="school-pick"' in page
    assert 'value="BD-1"' in page and 'value="HD-1"' in page
    assert "Quận Hà Đông" in page and "several schools have that name" in page
    assert DESCRIPTION in page  # what was typed is kept
    assert stored(publisher) == []

    chosen = post(client, "Nguyễn Trãi", school_pick="HD-1")
    assert chosen.status_code == 200  # type: ignore[attr-defined]
    assert [r.report.school_code for r in stored(publisher)] == ["HD-1"]


def test_a_pick_outside_the_directory_is_not_taken(
    client: TestClient, publisher: FakeReportPublisher
) -> None:
    resp = post(client, "Nguyễn Trãi", school_pick="XX-999")
    assert resp.status_code == 422  # type: ignore[attr-defined]
    assert stored(publisher) == []


def test_a_school_nobody_can_find_still_gets_the_report_in(
    client: TestClient, publisher: FakeReportPublisher
) -> None:
    resp = post(client, "Trường Quốc tế Ngôi Sao Xanh")
    assert resp.status_code == 200  # type: ignore[attr-defined]
    (report,) = stored(publisher)
    assert report.report.school_code == UNKNOWN_SCHOOL
    assert report.report.description == (
        f"{DESCRIPTION}\n\nSchool (as the reporter wrote it): Trường Quốc tế Ngôi Sao Xanh"
    )


def test_a_code_is_taken_as_it_is_even_outside_the_directory(
    client: TestClient, publisher: FakeReportPublisher
) -> None:
    assert post(client, "hd-1").status_code == 200  # type: ignore[attr-defined]
    assert post(client, "HN-XX-THCS-042").status_code == 200  # type: ignore[attr-defined]
    assert [r.report.school_code for r in stored(publisher)] == ["HD-1", "HN-XX-THCS-042"]


def test_reloading_the_thank_you_page_sends_nothing_again(
    client: TestClient, publisher: FakeReportPublisher
) -> None:
    resp = post(client, "BD-2", immediate_danger="1")
    assert [r.status_code for r in resp.history] == [303]  # type: ignore[attr-defined]
    again = client.get(str(resp.url))  # type: ignore[attr-defined]
    assert again.status_code == 200
    code = stored(publisher)[0].tracking_code
    assert code in again.text and "113" in again.text  # the danger reminder stays
    assert len(stored(publisher)) == 1
    assert client.get("/report/accepted?code=ESC-12").status_code == 404


def test_school_search_answers_names_codes_and_districts_only(client: TestClient) -> None:
    resp = client.get("/v1/schools", params={"q": "nguyen trai", "limit": 5})
    assert resp.status_code == 200
    assert resp.json() == {
        "schools": [
            {"code": "BD-1", "name": "Trường THCS Nguyễn Trãi", "district": "Quận Ba Đình"},
            {"code": "HD-1", "name": "Trường THCS Nguyễn Trãi", "district": "Quận Hà Đông"},
        ]
    }
    assert client.get("/v1/schools", params={"q": "thcs"}).json() == {"schools": []}
    assert client.get("/v1/schools", params={"q": "x" * 201}).status_code == 400
    assert client.get("/v1/schools", params={"q": "a", "limit": 0}).status_code == 400
    script = client.get("/report/school-search.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/v1/schools" in script.text
    assert 'list="school-suggestions"' in client.get("/report").text


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("HN-BD-THCS-001", True),
        ("hn-bd-th-002", True),
        ("BD-2", True),
        ("Phan Chu Trinh", False),
        ("Nguyễn Trãi", False),
        ("THCS-A", False),  # no digit: a name written with a hyphen
    ],
)
def test_what_looks_like_a_code(text: str, code: bool) -> None:
    assert looks_like_code(text) is code
