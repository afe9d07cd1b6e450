"""The personal action link and the authority API, against the real broker.

What must hold: opening a link changes nothing; a POST from the page records exactly one action
with who, for which organisation and how; anything forged, altered, expired, stale or sent from
another site is refused, counted and records nothing; tokens and notes never reach the log.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from itsdangerous.timed import TimestampSigner
from prometheus_client import CollectorRegistry

from escalate.topics_admin import ensure_topics
from producers.intake.action_page import HelpContact
from producers.intake.actions import ActionDesk, PageNonces
from producers.intake.app import create_app
from producers.intake.incidents import IncidentLookup, IncidentView
from producers.intake.publisher import ActionPublisher, ReportPublisher
from schemas.actions import IncidentAction
from schemas.common import Tier
from schemas.links import LinkClaims, LinkPurpose, LinkSigner
from schemas.topics import ESCALATION_STATE, INCIDENTS_ACTIONS
from tests.action_support import (
    CONTACT_NAME,
    CONTACT_PHONE,
    DESCRIPTION,
    SCHOOL,
    SCHOOL_NAME,
    SECRET,
    FakeIncidents,
    make_state,
    publish_state,
    read_actions,
)
from tests.conftest import free_port

pytestmark = pytest.mark.kafka

REPORT_KEY = "report-key"
POLICE_KEY = "police-system-key"
DISTRICT_KEY = "district-system-key"
LINK_MAX_AGE_S = 7 * 24 * 3600
RECIPIENT = "bgh@thcs-badinh.example"
NONCE_FIELD = re.compile(r'name="nonce" value="([^"]+)"')


@dataclass
class Harness:
    client: TestClient
    registry: CollectorRegistry
    bootstrap: str
    prefix: str
    view: IncidentLookup

    @property
    def actions_topic(self) -> str:
        return INCIDENTS_ACTIONS.name(self.prefix)

    def actions(self) -> list[IncidentAction]:
        return read_actions(self.bootstrap, self.actions_topic)

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        assert value is not None, f"{name}{labels} is not exported"
        return value


def build(bootstrap: str, prefix: str, view: IncidentLookup) -> Iterator[Harness]:
    ensure_topics(bootstrap, prefix)
    reports = ReportPublisher(bootstrap, prefix)
    publisher = ActionPublisher(bootstrap, prefix)
    registry = CollectorRegistry()
    desk = ActionDesk(
        secret_key=SECRET,
        link_max_age_s=LINK_MAX_AGE_S,
        authority_keys={
            POLICE_KEY: ("hanoi-police-system", Tier.police),
            DISTRICT_KEY: ("badinh-office-system", Tier.district_office),
        },
        publisher=publisher,
        incidents=view,
        school_names={SCHOOL: SCHOOL_NAME},
        help_contact=HelpContact("Sở GDĐT Hà Nội", "sogddt@hanoi.example"),
    )
    app = create_app(reports, {REPORT_KEY: "test-app"}, registry, actions=desk)
    try:
        with TestClient(app) as client:
            yield Harness(client, registry, bootstrap, prefix, view)
    finally:
        publisher.close()
        reports.close()


@pytest.fixture
def harness(kafka_bootstrap: str, isolation: str) -> Iterator[Harness]:
    """The intake with action routes and a fake view holding one known incident."""
    view = FakeIncidents({"inc-known": make_state("inc-known", acknowledged_by=Tier.school)})
    yield from build(kafka_bootstrap, f"{isolation}.", view)


@pytest.fixture
def real_view_harness(kafka_bootstrap: str, isolation: str) -> Iterator[Harness]:
    """The intake with the real incident view following the real state topic."""
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    view = IncidentView(kafka_bootstrap, prefix, poll_ms=200)
    view.start()
    try:
        assert view.wait_ready(30), "incident view did not catch up"
        yield from build(kafka_bootstrap, prefix, view)
    finally:
        view.close()


def token_for(
    incident_id: str = "inc-known",
    tier: Tier = Tier.school,
    purpose: LinkPurpose = LinkPurpose.act,
    secret: str = SECRET,
) -> str:
    return LinkSigner(secret).sign(LinkClaims(incident_id, RECIPIENT, tier, purpose))


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the service and its libraries logged; httpx is the test's own client, which
    logs every URL it requests (the token included)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))


def nonce_from(html: str) -> str:
    found = NONCE_FIELD.search(html)
    assert found, "the page has no nonce field"
    return found.group(1)


def open_page(h: Harness, token: str, lang: str = "vi") -> str:
    resp = h.client.get(f"/a/{token}", params={"lang": lang})
    assert resp.status_code == 200, resp.text
    text: str = resp.text
    return text


def post(
    h: Harness,
    token: str,
    action: str,
    nonce: str,
    note: str = "",
    lang: str = "vi",
    **headers: str,
) -> httpx.Response:
    """What the page's form sends: to its own link, in the page's language."""
    resp: httpx.Response = h.client.post(
        f"/a/{token}",
        params={"lang": lang},
        data={"action": action, "nonce": nonce, "note": note},
        headers=headers,
        follow_redirects=False,
    )
    return resp


# --- the page ---------------------------------------------------------------------------------


def test_the_page_shows_the_incident_and_publishes_nothing(harness: Harness) -> None:
    token = token_for()
    resp = harness.client.get(f"/a/{token}")
    assert resp.status_code == 200
    html = resp.text
    assert '<html lang="vi">' in html
    assert 'name="viewport"' in html
    assert "inc-known" in html
    assert "Rất nghiêm trọng" in html  # critical
    assert "Xâm hại, dụ dỗ tình dục" in html  # sexual_exploitation
    assert f"{SCHOOL_NAME} ({SCHOOL})" in html
    assert "02/03/2026 20:05 (giờ Hà Nội)" in html
    assert DESCRIPTION in html
    assert 'data-status="acknowledged"' in html
    assert (
        "Ban giám hiệu nhà trường</strong>: đã được báo; đã xác nhận lúc 02/03/2026 20:35" in html
    )
    assert "Xác nhận đã tiếp nhận" in html and "Đã xử lý xong" in html
    assert 'maxlength="2000"' in html
    assert "<script" not in html
    # Whoever holds the mail can open the page: never the reporter's contact.
    assert CONTACT_NAME not in html and CONTACT_PHONE not in html
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["referrer-policy"] == "same-origin"
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]

    english = open_page(harness, token, "en")
    assert '<html lang="en">' in english
    assert "Acknowledge" in english and "Resolved – handled, no further action" in english
    assert "02/03/2026 20:05 (Hanoi time)" in english
    assert 'href="?lang=vi"' in english

    # A link previewer fetching the page again and again still records nothing.
    for _ in range(3):
        open_page(harness, token)
    assert harness.actions() == []


def test_an_incident_not_yet_known_still_renders_and_can_be_acknowledged(
    harness: Harness,
) -> None:
    token = token_for("inc-not-routed-yet", Tier.district_office)
    html = open_page(harness, token)
    assert 'data-status="unknown"' in html
    assert "inc-not-routed-yet" in html
    resp = post(harness, token, "acknowledge", nonce_from(html))
    assert resp.status_code == 303
    (action,) = harness.actions()
    assert action.incident_id == "inc-not-routed-yet"
    assert action.tier is Tier.district_office


@pytest.mark.parametrize("kind", ["acknowledge", "resolve", "note"])
def test_a_post_from_the_page_records_one_action(harness: Harness, kind: str) -> None:
    token = token_for(tier=Tier.school)
    nonce = nonce_from(open_page(harness, token, "en"))
    # Decomposed Vietnamese and a bidi override: the model stores NFC without the override.
    typed = unicodedata.normalize("NFD", "Đã gọi phụ huynh, nhà trường đang xử lý.") + "\u202e"
    resp = post(harness, token, kind, nonce, typed, "en", Origin="http://testserver")
    assert resp.status_code == 303, resp.text
    location = resp.headers["location"]
    assert location == f"{token}?lang=en&done={kind}"

    (action,) = harness.actions()
    assert action.incident_id == "inc-known"
    assert action.kind.value == kind
    assert action.tier is Tier.school
    assert action.actor == RECIPIENT
    assert action.via == "link"
    assert action.note == "Đã gọi phụ huynh, nhà trường đang xử lý."
    uuid.UUID(action.action_id)
    assert harness.metric("escalate_incident_actions_total", kind=kind, via="link") == 1

    # The redirect's page confirms; opening (or refreshing) it records nothing more.
    for _ in range(2):
        done = harness.client.get(f"/a/{location}")
        assert done.status_code == 200
        assert f'data-done="{kind}"' in done.text
    assert len(harness.actions()) == 1


def test_acknowledge_without_a_note_and_invalid_forms(harness: Harness) -> None:
    token = token_for()
    nonce = nonce_from(open_page(harness, token))
    empty_note = post(harness, token, "note", nonce, "   ")
    assert empty_note.status_code == 422
    assert 'data-problem="err_note_missing"' in empty_note.text
    unknown = post(harness, token, "delete", nonce, "giữ nguyên")
    assert unknown.status_code == 422
    assert "giữ nguyên" in unknown.text  # what was typed is kept
    too_long = post(harness, token, "acknowledge", nonce, "x" * 2001)
    assert too_long.status_code == 422
    assert 'data-problem="err_note_long"' in too_long.text
    assert harness.actions() == []

    plain = post(harness, token, "acknowledge", nonce)
    assert plain.status_code == 303
    (action,) = harness.actions()
    assert action.note is None


def test_a_review_link_may_acknowledge_too(harness: Harness) -> None:
    token = token_for(tier=Tier.city_office, purpose=LinkPurpose.review)
    nonce = nonce_from(open_page(harness, token))
    assert post(harness, token, "acknowledge", nonce).status_code == 303
    (action,) = harness.actions()
    assert action.tier is Tier.city_office


# --- refusals ---------------------------------------------------------------------------------


def tampered(token: str) -> str:
    """One character changed in the middle of the token (never the last, whose low bits
    base64 may ignore, and never a separator)."""
    i = len(token) // 2
    while token[i] == ".":
        i += 1
    swap = "A" if token[i] != "A" else "B"
    return token[:i] + swap + token[i + 1 :]


def expired_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """A token signed eight days ago: itsdangerous stamps it with the time we give it."""
    eight_days_ago = int(time.time() - timedelta(days=8).total_seconds())
    with monkeypatch.context() as m:
        m.setattr(TimestampSigner, "get_timestamp", lambda self: eight_days_ago)
        return token_for()


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        ("forged", 403, "invalid"),
        ("tampered", 403, "invalid"),
        ("malformed", 403, "invalid"),
        ("expired", 410, "expired"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_links_are_refused_counted_and_change_nothing(
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    status: int,
    reason: str,
    method: str,
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="escalate")
    good = token_for()
    nonce = nonce_from(open_page(harness, good))
    makers: dict[str, Callable[[], str]] = {
        "forged": lambda: token_for(secret="someone-elses-key"),
        "tampered": lambda: tampered(good),
        "malformed": lambda: "not-a-token",
        "expired": lambda: expired_token(monkeypatch),
    }
    token = makers[kind]()
    if method == "GET":
        resp = harness.client.get(f"/a/{token}")
    else:
        resp = harness.client.post(
            f"/a/{token}", data={"action": "acknowledge", "nonce": nonce}, follow_redirects=False
        )
    assert resp.status_code == status
    assert f'data-reason="{reason}"' in resp.text
    assert "sogddt@hanoi.example" in resp.text  # whom to ask instead
    assert "inc-known" not in resp.text and DESCRIPTION not in resp.text
    assert harness.metric("escalate_action_links_refused_total", reason=reason) == 1
    logged = server_log(caplog)
    assert token not in logged
    assert f"action link refused ({reason})" in logged
    assert harness.actions() == []


def test_posts_without_a_fresh_nonce_for_this_link_are_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = token_for()
    other = token_for("inc-other", Tier.school)
    good_nonce = nonce_from(open_page(harness, token))
    other_nonce = nonce_from(open_page(harness, other))
    with monkeypatch.context() as m:
        three_hours_ago = int(time.time() - 3 * 3600)
        m.setattr(TimestampSigner, "get_timestamp", lambda self: three_hours_ago)
        stale_nonce = PageNonces(SECRET).issue(token)
    refused = {
        "missing": harness.client.post(
            f"/a/{token}", data={"action": "acknowledge"}, follow_redirects=False
        ),
        "altered": post(harness, token, "acknowledge", tampered(good_nonce)),
        "other page": post(harness, token, "acknowledge", other_nonce),
        "stale": post(harness, token, "acknowledge", stale_nonce),
        "link token as nonce": post(harness, token, "acknowledge", token),
    }
    for name, resp in refused.items():
        assert resp.status_code == 403, name
        assert 'data-reason="bad_nonce"' in resp.text, name
        # The link itself is good: offer to open the page again.
        assert f'href="{token}?lang=vi"' in resp.text, name
    assert harness.metric("escalate_action_links_refused_total", reason="bad_nonce") == 5
    assert harness.actions() == []


def test_a_post_from_another_origin_is_refused(harness: Harness) -> None:
    token = token_for()
    nonce = nonce_from(open_page(harness, token))
    for origin in ("https://evil.example", "null", "http://testserver.evil.example"):
        resp = post(harness, token, "resolve", nonce, Origin=origin)
        assert resp.status_code == 403, origin
        assert 'data-reason="cross_origin"' in resp.text
    assert harness.metric("escalate_action_links_refused_total", reason="cross_origin") == 3
    assert harness.metric("escalate_action_links_refused_total", reason="wrong_purpose") == 0
    assert harness.actions() == []


def test_notes_and_tokens_never_reach_the_log(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # Our own loggers at their most verbose; libraries as deployed (kafka-python's DEBUG
    # dumps raw request bytes, which nobody runs in production).
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="escalate")
    note = "Ghi chú bí mật: em Lan lớp 8A, số nhà 12"
    token = token_for()
    nonce = nonce_from(open_page(harness, token))
    assert post(harness, token, "note", nonce, note).status_code == 303
    api = harness.client.post(
        "/v1/incidents/inc-known/ack", json={"note": note}, headers={"X-API-Key": POLICE_KEY}
    )
    assert api.status_code == 202
    assert len(harness.actions()) == 2
    logged = server_log(caplog)
    assert "recorded for" in logged  # the actions were logged ...
    assert note not in logged  # ... without their notes
    assert "em Lan" not in logged
    assert token not in logged and nonce not in logged
    assert POLICE_KEY not in logged


# --- the authority API ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": REPORT_KEY}, {"X-API-Key": "wrong"}],
    ids=["no-key", "report-key", "wrong-key"],
)
def test_the_authority_api_needs_an_authority_key(
    harness: Harness, headers: dict[str, str]
) -> None:
    for path in ("/v1/incidents/inc-known/ack", "/v1/incidents/inc-known/resolve"):
        resp = harness.client.post(path, json={"note": "x"}, headers=headers)
        assert resp.status_code == 401, path
        assert "X-API-Key" in resp.json()["error"]
    assert harness.client.get("/v1/incidents/inc-known", headers=headers).status_code == 401
    assert harness.actions() == []


def test_ack_and_resolve_by_api_are_stored_before_202(harness: Harness) -> None:
    ack = harness.client.post(
        "/v1/incidents/inc-not-routed-yet/ack", headers={"X-API-Key": DISTRICT_KEY}
    )
    assert ack.status_code == 202, ack.text
    resolve = harness.client.post(
        "/v1/incidents/inc-known/resolve",
        json={"note": "Công an đã xác minh và xử lý."},
        headers={"X-API-Key": POLICE_KEY},
    )
    assert resolve.status_code == 202, resolve.text
    stored = {a.action_id: a for a in read_actions(harness.bootstrap, harness.actions_topic)}
    first = stored[ack.json()["action_id"]]
    assert (first.incident_id, first.kind.value, first.tier, first.actor, first.via) == (
        "inc-not-routed-yet",
        "acknowledge",
        Tier.district_office,
        "badinh-office-system",
        "api",
    )
    assert first.note is None
    second = stored[resolve.json()["action_id"]]
    assert (second.kind.value, second.tier, second.actor, second.via) == (
        "resolve",
        Tier.police,
        "hanoi-police-system",
        "api",
    )
    assert second.note == "Công an đã xác minh và xử lý."
    assert harness.metric("escalate_incident_actions_total", kind="acknowledge", via="api") == 1
    assert harness.metric("escalate_incident_actions_total", kind="resolve", via="api") == 1
    assert harness.metric("escalate_incident_actions_total", kind="note", via="link") == 0


@pytest.mark.parametrize(
    ("body", "status", "expect"),
    [
        (b"{not json", 400, "not valid UTF-8 JSON"),
        (b'["note"]', 400, "JSON object"),
        (b'{"note": "ok", "by": "me"}', 422, "unknown field"),
        (b'{"note": 5}', 422, "note"),
        (('{"note": "' + "x" * 2001 + '"}').encode(), 422, "at most 2000"),
    ],
    ids=["malformed", "not-object", "extra-field", "not-text", "too-long"],
)
def test_bad_api_bodies_are_refused_with_a_reason(
    harness: Harness, body: bytes, status: int, expect: str
) -> None:
    resp = harness.client.post(
        "/v1/incidents/inc-known/ack",
        content=body,
        headers={"X-API-Key": POLICE_KEY, "Content-Type": "application/json"},
    )
    assert resp.status_code == status
    assert expect in resp.text
    assert harness.actions() == []


def test_the_status_api_answers_from_the_state_topic(real_view_harness: Harness) -> None:
    h = real_view_harness
    headers = {"X-API-Key": DISTRICT_KEY}
    assert h.client.get("/v1/incidents/inc-7", headers=headers).status_code == 404
    state = make_state("inc-7", acknowledged_by=Tier.school, resolved=True)
    publish_state(h.bootstrap, ESCALATION_STATE.name(h.prefix), state)

    deadline = time.monotonic() + 20
    while (resp := h.client.get("/v1/incidents/inc-7", headers=headers)).status_code == 404:
        assert time.monotonic() < deadline, "the state never showed up"
        time.sleep(0.2)
    assert resp.status_code == 200
    body = resp.json()
    assert body == {
        "incident_id": "inc-7",
        "status": "resolved",
        "severity": "critical",
        "category": "sexual_exploitation",
        "step": 0,
        "next_due": "2026-03-02T15:05:00Z",
        "tiers": {
            "school": {
                "notified_at_step": 0,
                "acknowledged": {
                    "by": "bgh@school.example",
                    "at": "2026-03-02T13:35:00Z",
                    "via": "link",
                },
            },
            "district_office": {"notified_at_step": 0, "acknowledged": None},
            "city_office": {"notified_at_step": None, "acknowledged": None},
        },
        "resolved": {
            "by": "police-system",
            "at": "2026-03-02T14:05:00Z",
            "via": "api",
            "tier": "police",
        },
    }
    assert DESCRIPTION not in resp.text and CONTACT_PHONE not in resp.text

    # The same real view feeds the page.
    page = open_page(h, token_for("inc-7"))
    assert 'data-status="resolved"' in page and DESCRIPTION in page
    assert h.actions() == []


def test_the_status_api_says_retry_while_the_view_is_loading(harness: Harness) -> None:
    assert isinstance(harness.view, FakeIncidents)
    harness.view.is_ready = False
    resp = harness.client.get("/v1/incidents/inc-unknown", headers={"X-API-Key": POLICE_KEY})
    assert resp.status_code == 503 and resp.json()["retry"] is True
    known = harness.client.get("/v1/incidents/inc-known", headers={"X-API-Key": POLICE_KEY})
    assert known.status_code == 200 and known.json()["status"] == "acknowledged"


def test_every_route_is_documented(harness: Harness) -> None:
    paths = harness.client.get("/openapi.json").json()["paths"]
    expected = {
        ("/a/{token}", "get"): {"200", "403", "410"},
        ("/a/{token}", "post"): {"303", "403", "410", "413", "422", "503"},
        ("/v1/incidents/{incident_id}", "get"): {"200", "401", "404", "503"},
        ("/v1/incidents/{incident_id}/ack", "post"): {"202", "400", "401", "422", "503"},
        ("/v1/incidents/{incident_id}/resolve", "post"): {"202", "400", "401", "422", "503"},
    }
    for (path, method), codes in expected.items():
        operation = paths[path][method]
        assert codes <= set(operation["responses"]), (path, method)
    ack = paths["/v1/incidents/{incident_id}/ack"]["post"]
    assert "note" in str(ack["requestBody"])
    assert any(p["name"].lower() == "x-api-key" for p in ack["parameters"])


def test_without_an_action_desk_the_intake_is_unchanged(kafka_bootstrap: str) -> None:
    app = create_app(ReportPublisher(kafka_bootstrap), {REPORT_KEY: "x"}, CollectorRegistry())
    with TestClient(app) as client:
        assert client.get(f"/a/{token_for()}").status_code == 404
        assert client.post("/v1/incidents/inc-1/ack").status_code == 404


def test_api_notes_are_measured_as_stored_and_ids_checked(harness: Harness) -> None:
    headers = {"X-API-Key": POLICE_KEY}
    # 1500 letters typed decomposed are 4500 code points, but 1500 once stored in NFC.
    typed = unicodedata.normalize("NFD", "ế" * 1500)
    resp = harness.client.post("/v1/incidents/inc-known/ack", json={"note": typed}, headers=headers)
    assert resp.status_code == 202, resp.text
    bad_id = harness.client.post("/v1/incidents/inc%20known%3Cx%3E/ack", headers=headers)
    assert bad_id.status_code == 422
    assert bad_id.json()["fields"][0]["field"] == "incident_id"
    (action,) = harness.actions()
    assert action.note == "ế" * 1500


def test_when_the_broker_is_away_nothing_is_claimed(kafka_bootstrap: str) -> None:
    """No broker behind the action publisher (a port nobody listens on): the page says 'not
    recorded, try again' and keeps the note; the API answers 503 with retry."""
    nowhere = ActionPublisher(f"127.0.0.1:{free_port()}", timeout_s=1.0)
    registry = CollectorRegistry()
    desk = ActionDesk(
        secret_key=SECRET,
        link_max_age_s=LINK_MAX_AGE_S,
        authority_keys={POLICE_KEY: ("hanoi-police-system", Tier.police)},
        publisher=nowhere,
        incidents=FakeIncidents(),
    )
    app = create_app(ReportPublisher(kafka_bootstrap), {}, registry, actions=desk)
    try:
        with TestClient(app) as client:
            h = Harness(client, registry, kafka_bootstrap, "", desk.incidents)
            token = token_for()
            nonce = nonce_from(open_page(h, token))
            resp = post(h, token, "acknowledge", nonce, "Đang xử lý")
            assert resp.status_code == 503
            assert 'data-problem="unavailable"' in resp.text
            assert "Đang xử lý</textarea>" in resp.text
            api = client.post("/v1/incidents/inc-1/ack", headers={"X-API-Key": POLICE_KEY})
            assert api.status_code == 503 and api.json()["retry"] is True
            assert h.metric("escalate_incident_actions_total", kind="acknowledge", via="link") == 0
    finally:
        nowhere.close()
