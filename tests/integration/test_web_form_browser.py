"""The bilingual web form driven by a real headless Chromium, against the real broker.

The browser does what a reporter does: reads the Vietnamese page, switches to English,
types a Vietnamese description (in decomposed Unicode, as some keyboards produce it), ticks
"in danger" and sends. The report must then be on the Kafka topic, committed, in NFC, under
the tracking code the page showed. A form the browser or the server refuses must store nothing.
Screenshots of each page land in SCREENSHOTS for a person to look at.
"""

from __future__ import annotations

import base64
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from escalate.settings import DEFAULT_CONFIG_DIR
from escalate.topics_admin import ensure_topics
from producers.intake.app import create_app
from producers.intake.publisher import ReportPublisher
from producers.intake.schools import SchoolFinder
from schemas.directory import Directory
from schemas.reports import ReportSubmitted
from schemas.topics import REPORTS_SUBMITTED
from schemas.yaml_loader import load_yaml_model
from tests.services.http import serve

pytestmark = pytest.mark.kafka

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(os.environ.get("ESCALATE_SCREENSHOT_DIR", "/tmp/escalate-web-form"))
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)
SCHOOL = "HN-BD-THCS-001"
DESCRIPTION = (
    "Trong giờ học trực tuyến tối qua, một người lạ vào lớp 8A, "
    "nhắn riêng cho các em và đòi gặp mặt. Các cháu rất sợ hãi."
)


@dataclass
class Intake:
    base: str
    topic: str
    bootstrap: str


@pytest.fixture
def intake(kafka_bootstrap: str, isolation: str) -> Iterator[Intake]:
    """The intake app served by uvicorn on a real port, publishing to this test's topics."""
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    publisher = ReportPublisher(kafka_bootstrap, prefix)
    directory = load_yaml_model(DEFAULT_CONFIG_DIR / "directory.yaml", Directory)
    app = create_app(publisher, {}, CollectorRegistry(), schools=SchoolFinder(directory))
    try:
        with serve(app) as base:
            yield Intake(base, REPORTS_SUBMITTED.name(prefix), kafka_bootstrap)
    finally:
        publisher.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: install Debian's {package} package")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, name: str) -> Path:
    """The whole page, not only the window, so a long form is seen to its end."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert isinstance(driver, webdriver.Chrome)
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    path = SCREENSHOTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def read_topic(intake: Intake) -> list[ReportSubmitted]:
    """Committed records only: what the processors would see."""
    consumer = KafkaConsumer(
        intake.topic,
        bootstrap_servers=intake.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=4000,
        isolation_level="read_committed",
    )
    try:
        return [ReportSubmitted.model_validate_json(m.value) for m in consumer]
    finally:
        consumer.close()


def page_lang(driver: WebDriver) -> str:
    lang: str = driver.find_element(By.TAG_NAME, "html").get_attribute("lang") or ""
    return lang


def wait_lang(driver: WebDriver, lang: str) -> None:
    WebDriverWait(driver, 15).until(lambda d: page_lang(d) == lang)


def fill(
    driver: WebDriver, description: str, danger: bool = False, school_text: str = SCHOOL
) -> None:
    school = driver.find_element(By.ID, "school_code")
    school.clear()
    school.send_keys(school_text)
    Select(driver.find_element(By.ID, "reporter_role")).select_by_value("teacher")
    text = driver.find_element(By.ID, "description")
    text.clear()
    if description:
        text.send_keys(description)
    box = driver.find_element(By.NAME, "immediate_danger")
    if box.is_selected() != danger:
        box.click()


def submit(driver: WebDriver) -> None:
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def test_a_report_sent_from_the_browser_is_stored_with_its_tracking_code(
    intake: Intake, browser: WebDriver
) -> None:
    browser.get(f"{intake.base}/report")
    assert page_lang(browser) == "vi"
    title = browser.find_element(By.TAG_NAME, "h1").text
    assert any(unicodedata.combining(c) for c in unicodedata.normalize("NFD", title)), title
    assert browser.find_element(By.CSS_SELECTOR, "label[for=school_code]").text.startswith("Trường")
    screenshot(browser, "form-vi")

    browser.find_element(By.LINK_TEXT, "English").click()
    wait_lang(browser, "en")
    assert "lang=en" in browser.current_url
    assert browser.find_element(By.CSS_SELECTOR, "label[for=school_code]").text.startswith("School")

    # Typed decomposed (base letter + combining marks); the stored text must be NFC.
    typed = unicodedata.normalize("NFD", DESCRIPTION)
    assert typed != DESCRIPTION
    fill(browser, typed, danger=True)
    # The browser sends the text as typed, so the NFC below is the intake's doing.
    assert browser.find_element(By.ID, "description").get_attribute("value") == typed
    assert browser.find_element(By.NAME, "immediate_danger").is_selected()
    screenshot(browser, "form-en-filled")
    submit(browser)

    code_el = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "tracking-code"))
    tracking_code = code_el.text.strip()
    assert tracking_code
    assert page_lang(browser) == "en"
    screenshot(browser, "accepted-en")

    stored = read_topic(intake)
    assert [s.tracking_code for s in stored] == [tracking_code]
    (report,) = stored
    assert report.intake_client == "web_form"
    assert report.report.channel.value == "web_form"
    assert report.report.reporter_role.value == "teacher"
    assert report.report.school_code == SCHOOL
    assert report.report.immediate_danger is True
    assert report.report.contact is None
    assert report.report.description == DESCRIPTION
    assert unicodedata.is_normalized("NFC", report.report.description)


def test_an_invalid_form_shows_the_problem_and_stores_nothing(
    intake: Intake, browser: WebDriver
) -> None:
    browser.get(f"{intake.base}/report")
    wait_lang(browser, "vi")
    form_url = browser.current_url

    # Empty description: the browser itself refuses to send the form.
    fill(browser, "")
    submit(browser)
    description = browser.find_element(By.ID, "description")
    assert browser.execute_script("return arguments[0].validity.valueMissing", description)
    assert browser.current_url == form_url
    assert not browser.find_elements(By.CSS_SELECTOR, "[role=alert]")

    # Only spaces: the browser sends it, the server strips it and answers with the problem.
    fill(browser, "    ")
    submit(browser)
    alert = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, ".errors[role=alert]")
    )
    assert alert.is_displayed()
    assert "Vui lòng sửa các mục sau" in alert.text
    assert "Chuyện gì đã xảy ra: quá ngắn" in alert.text
    assert page_lang(browser) == "vi"
    # What the reporter typed is kept, so only the mistake needs fixing.
    assert browser.find_element(By.ID, "school_code").get_attribute("value") == SCHOOL
    assert not browser.find_elements(By.ID, "tracking-code")
    screenshot(browser, "invalid-vi")
    assert read_topic(intake) == []

    # Correcting it on the same page works, and only the corrected report is stored.
    fill(browser, DESCRIPTION)
    submit(browser)
    code = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "tracking-code"))
    assert [s.tracking_code for s in read_topic(intake)] == [code.text.strip()]


def test_the_form_fits_a_phone_screen(intake: Intake, browser: WebDriver) -> None:
    browser.set_window_size(390, 844)
    try:
        browser.get(f"{intake.base}/report")
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"page is {overflow}px wider than a phone screen"
        screenshot(browser, "form-vi-phone")
    finally:
        browser.set_window_size(1280, 1000)


def test_a_school_found_by_its_name_typed_without_accents(
    intake: Intake, browser: WebDriver
) -> None:
    """A parent does not know the code: the field suggests schools as they type, and the
    name (here as a suggestion would fill it in) files the report under the right code.
    Reloading the thank-you page does not send the report again (post/redirect/get)."""
    browser.get(f"{intake.base}/report?lang=en")
    field = browser.find_element(By.ID, "school_code")
    field.send_keys("phan chu tri")
    options = WebDriverWait(browser, 15).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#school-suggestions option")
    )
    suggested = [o.get_attribute("value") for o in options]
    assert suggested[0] == "Trường THCS Phan Chu Trinh (Quận Ba Đình)", suggested
    screenshot(browser, "form-en-school-suggestions")

    fill(browser, DESCRIPTION, school_text=suggested[0] or "")
    submit(browser)
    shown = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "tracking-code"))
    code = shown.text.strip()
    assert "/report/accepted" in browser.current_url
    browser.refresh()
    again = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "tracking-code"))
    assert again.text.strip() == code
    stored = read_topic(intake)
    assert [(s.tracking_code, s.report.school_code) for s in stored] == [(code, "HN-BD-THCS-001")]
