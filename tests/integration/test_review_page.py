"""The triage page a review mail links to, against the real broker for the actions topic.

What must hold: a review link shows the report, the classifier's decision and reasons, and two
selects; its POST (same nonce and origin checks as every action) records exactly one
``reclassify`` with who and for which organisation; an action link never gets the form and
cannot reclassify (``wrong_purpose``, counted); a review link can still acknowledge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from schemas.actions import ActionKind
from schemas.common import Category, Severity, Tier
from schemas.escalation import ReviewState
from schemas.incidents import Decision
from schemas.links import LinkPurpose
from tests.action_support import CONTACT_PHONE, DESCRIPTION, RECEIVED, FakeIncidents, make_state
from tests.integration.test_ack_links import (
    RECIPIENT,
    Harness,
    build,
    nonce_from,
    open_page,
    server_log,
    token_for,
)

pytestmark = pytest.mark.kafka

REASONS = ["no rule matched"]


@pytest.fixture
def harness(kafka_bootstrap: str, isolation: str) -> Iterator[Harness]:
    """The intake with an incident the classifier put at other/low, waiting for review."""
    state = make_state("inc-unsure")
    assert state.incident is not None
    decision = Decision(
        severity=Severity.low,
        category=Category.other,
        reasons=REASONS,
        needs_review=True,
        rules_version="test",
    )
    state.incident = state.incident.model_copy(update={"decision": decision})
    state.severity, state.category = Severity.low, Category.other
    state.review = ReviewState(reason="needs_review", opened_at=RECEIVED, due=RECEIVED)
    yield from build(kafka_bootstrap, f"{isolation}.", FakeIncidents({"inc-unsure": state}))


def review_token(purpose: LinkPurpose = LinkPurpose.review) -> str:
    return token_for("inc-unsure", Tier.city_office, purpose)


def reclassify(
    h: Harness,
    token: str,
    nonce: str,
    severity: str = "critical",
    category: str = "sexual_exploitation",
    lang: str = "vi",
    **headers: str,
) -> httpx.Response:
    resp: httpx.Response = h.client.post(
        f"/a/{token}",
        params={"lang": lang},
        data={"action": "reclassify", "nonce": nonce, "severity": severity, "category": category},
        headers=headers,
        follow_redirects=False,
    )
    return resp


def test_the_review_page_shows_the_report_the_decision_and_the_selects(harness: Harness) -> None:
    token = review_token()
    html = open_page(harness, token)
    assert '<html lang="vi">' in html and 'name="viewport"' in html
    assert 'id="review"' in html and "Xem xét phân loại" in html
    assert DESCRIPTION in html
    assert 'data-severity="low"' in html and 'data-category="other"' in html
    assert "<li>no rule matched</li>" in html
    assert '<select id="severity" name="severity" required>' in html
    assert '<option value="low" selected>Thấp</option>' in html
    assert '<option value="other" selected>Khác</option>' in html
    assert '<option value="sexual_exploitation">Xâm hại, dụ dỗ tình dục</option>' in html
    assert 'value="reclassify"' in html
    # It is still the incident page: acknowledging is offered too.
    assert 'value="acknowledge"' in html
    assert "<script" not in html
    assert CONTACT_PHONE not in html

    english = open_page(harness, token, "en")
    assert "Review the classification" in english and "Save the classification" in english
    assert '<option value="critical">Critical</option>' in english
    assert harness.actions() == []


def test_the_reviewer_sets_severity_and_category(harness: Harness) -> None:
    token = review_token()
    nonce = nonce_from(open_page(harness, token, "en"))
    resp = reclassify(harness, token, nonce, lang="en", Origin="http://testserver")
    assert resp.status_code == 303, resp.text
    location = resp.headers["location"]
    assert location == f"{token}?lang=en&done=reclassify"
    (action,) = harness.actions()
    assert action.kind is ActionKind.reclassify
    assert (action.severity, action.category) == (Severity.critical, Category.sexual_exploitation)
    assert action.tier is Tier.city_office and action.actor == RECIPIENT
    assert action.via == "link" and action.incident_id == "inc-unsure"
    assert action.note is None
    assert harness.metric("escalate_incident_actions_total", kind="reclassify", via="link") == 1
    done = harness.client.get(f"/a/{location}")
    assert 'data-done="reclassify"' in done.text
    assert len(harness.actions()) == 1


def test_a_confirmation_is_a_reclassify_with_the_same_values(harness: Harness) -> None:
    token = review_token()
    nonce = nonce_from(open_page(harness, token))
    assert reclassify(harness, token, nonce, "low", "other").status_code == 303
    (action,) = harness.actions()
    assert (action.severity, action.category) == (Severity.low, Category.other)


@pytest.mark.parametrize(
    ("severity", "category"),
    [("urgent", "other"), ("low", "gossip"), ("", ""), ("critical", "")],
)
def test_values_outside_the_lists_are_refused_and_nothing_recorded(
    harness: Harness, severity: str, category: str
) -> None:
    token = review_token()
    nonce = nonce_from(open_page(harness, token))
    resp = reclassify(harness, token, nonce, severity, category)
    assert resp.status_code == 422
    assert 'data-problem="err_review"' in resp.text
    assert harness.actions() == []


def test_an_action_link_never_gets_the_review_form(harness: Harness) -> None:
    token = review_token(LinkPurpose.act)
    html = open_page(harness, token)
    assert 'id="review"' not in html and 'value="reclassify"' not in html
    asked = harness.client.get(f"/a/{token}", params={"view": "review"})
    assert asked.status_code == 403 and 'data-reason="wrong_purpose"' in asked.text
    # Posting the form by hand with the page's own nonce is refused too.
    resp = reclassify(harness, token, nonce_from(html))
    assert resp.status_code == 403 and 'data-reason="wrong_purpose"' in resp.text
    assert harness.metric("escalate_action_links_refused_total", reason="wrong_purpose") == 2
    assert harness.actions() == []
    # The review link may ask for the form by name.
    assert harness.client.get(f"/a/{review_token()}", params={"view": "review"}).status_code == 200


def test_the_review_post_needs_the_nonce_and_our_origin(harness: Harness) -> None:
    token = review_token()
    nonce = nonce_from(open_page(harness, token))
    other = nonce_from(open_page(harness, token_for("inc-unsure", Tier.police, LinkPurpose.review)))
    assert reclassify(harness, token, "").status_code == 403
    assert reclassify(harness, token, other).status_code == 403
    assert reclassify(harness, token, nonce, Origin="https://evil.example").status_code == 403
    assert harness.metric("escalate_action_links_refused_total", reason="bad_nonce") == 2
    assert harness.metric("escalate_action_links_refused_total", reason="cross_origin") == 1
    assert harness.actions() == []


def test_a_review_link_may_still_acknowledge(harness: Harness) -> None:
    token = review_token()
    nonce = nonce_from(open_page(harness, token))
    resp = harness.client.post(
        f"/a/{token}",
        data={"action": "acknowledge", "nonce": nonce, "note": ""},
        follow_redirects=False,
    )
    assert resp.status_code == 303
    (action,) = harness.actions()
    assert action.kind is ActionKind.acknowledge and action.tier is Tier.city_office


def test_reviews_never_log_the_token_or_the_report(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="escalate")
    token = review_token()
    nonce = nonce_from(open_page(harness, token))
    assert reclassify(harness, token, nonce).status_code == 303
    logged = server_log(caplog)
    assert "review recorded for incident inc-unsure" in logged
    assert token not in logged and nonce not in logged
    assert DESCRIPTION not in logged and RECIPIENT not in logged
