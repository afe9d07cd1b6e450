"""The incident page of a mail's personal link, in a real headless Chromium at phone width.

A recipient reads the mail on a phone, taps the link and then 'Acknowledge'. The page must fit
the screen (no sideways scrolling, every button within reach), speak Vietnamese by default and
English on request, and the tap must end in a confirmation and one action on the Kafka topic.
Screenshots land in SCREENSHOTS for a person to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from escalate.topics_admin import ensure_topics
from producers.intake.actions import ActionDesk
from producers.intake.app import create_app
from producers.intake.publisher import ActionPublisher, ReportPublisher
from schemas.actions import ActionKind
from schemas.common import Tier
from schemas.links import LinkClaims, LinkPurpose, LinkSigner
from schemas.topics import INCIDENTS_ACTIONS
from tests.action_support import (
    SCHOOL,
    SCHOOL_NAME,
    SECRET,
    FakeIncidents,
    make_state,
    read_actions,
)
from tests.integration.test_web_form_browser import browser, page_lang, screenshot, wait_lang
from tests.services.http import serve

pytestmark = pytest.mark.kafka

__all__ = ["browser"]  # the fixture, shared with the web form's browser test

PHONE = (375, 800)
RECIPIENT = "bgh@thcs-badinh.example"


@dataclass
class Served:
    base: str
    bootstrap: str
    topic: str


@pytest.fixture
def served(kafka_bootstrap: str, isolation: str) -> Iterator[Served]:
    """The intake with action routes on a real port; the view knows one incident."""
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    reports = ReportPublisher(kafka_bootstrap, prefix)
    actions = ActionPublisher(kafka_bootstrap, prefix)
    desk = ActionDesk(
        secret_key=SECRET,
        link_max_age_s=7 * 24 * 3600,
        authority_keys={},
        publisher=actions,
        incidents=FakeIncidents({"inc-phone": make_state("inc-phone")}),
        school_names={SCHOOL: SCHOOL_NAME},
    )
    app = create_app(reports, {}, CollectorRegistry(), actions=desk)
    try:
        with serve(app) as base:
            yield Served(base, kafka_bootstrap, INCIDENTS_ACTIONS.name(prefix))
    finally:
        actions.close()
        reports.close()


@pytest.fixture
def phone(browser: webdriver.Chrome) -> Iterator[webdriver.Chrome]:
    browser.set_window_size(*PHONE)
    try:
        yield browser
    finally:
        browser.set_window_size(1280, 1000)


def fits_the_screen(driver: WebDriver) -> None:
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"page is {overflow}px wider than the phone screen"
    width = driver.execute_script("return document.documentElement.clientWidth")
    for button_id in ("acknowledge", "resolve", "add-note"):
        button = driver.find_element(By.ID, button_id)
        assert button.is_displayed() and button.is_enabled(), button_id
        left = driver.execute_script("return arguments[0].getBoundingClientRect().left", button)
        right = driver.execute_script("return arguments[0].getBoundingClientRect().right", button)
        height = driver.execute_script("return arguments[0].getBoundingClientRect().height", button)
        assert left >= 0 and right <= width, (button_id, left, right, width)
        assert height >= 44, f"{button_id} is {height}px high: too small to tap"


def test_a_recipient_acknowledges_from_a_phone(served: Served, phone: WebDriver) -> None:
    token = LinkSigner(SECRET).sign(
        LinkClaims("inc-phone", RECIPIENT, Tier.school, LinkPurpose.act)
    )
    phone.get(f"{served.base}/a/{token}")
    assert page_lang(phone) == "vi"
    assert phone.find_element(By.TAG_NAME, "h1").text == "Sự việc cần xử lý"
    assert phone.find_element(By.ID, "acknowledge").text == "Xác nhận đã tiếp nhận"
    assert SCHOOL_NAME in phone.find_element(By.TAG_NAME, "main").text
    fits_the_screen(phone)
    screenshot(phone, "ack-page-vi-phone")

    phone.find_element(By.LINK_TEXT, "English").click()
    wait_lang(phone, "en")
    assert phone.find_element(By.ID, "acknowledge").text == "Acknowledge"
    fits_the_screen(phone)
    screenshot(phone, "ack-page-en-phone")
    assert read_actions(served.bootstrap, served.topic) == []  # reading changes nothing

    phone.find_element(By.ID, "note").send_keys("Nhà trường đã liên hệ phụ huynh.")
    phone.find_element(By.ID, "acknowledge").click()
    done = WebDriverWait(phone, 30).until(lambda d: d.find_element(By.ID, "done"))
    assert done.is_displayed()
    assert "you acknowledged" in done.text
    assert page_lang(phone) == "en"
    fits_the_screen(phone)
    screenshot(phone, "ack-page-done-en-phone")

    (action,) = read_actions(served.bootstrap, served.topic)
    assert action.incident_id == "inc-phone"
    assert action.kind is ActionKind.acknowledge
    assert (action.tier, action.actor, action.via) == (Tier.school, RECIPIENT, "link")
    assert action.note == "Nhà trường đã liên hệ phụ huynh."

    # Reloading the confirmation does not send the form again.
    phone.refresh()
    WebDriverWait(phone, 30).until(lambda d: d.find_element(By.ID, "done"))
    assert len(read_actions(served.bootstrap, served.topic)) == 1
