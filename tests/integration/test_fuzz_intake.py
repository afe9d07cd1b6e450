"""Every operation of the intake's OpenAPI document, fuzzed by schemathesis against the real
broker: no 5xx, only documented status codes and content types, no response that echoes a
secret, and nothing on a topic that does not parse as its contract.

The app is the one ``escalate run intake`` builds, minus the process: intake, status pages,
action links and the authority API (over a fake incident view holding one incident), and a
Telegram webhook (so the bots' routes are fuzzed too; without the secret header they refuse).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    status_code_conformance,
)

from escalate.topics_admin import ensure_topics
from producers.bots.platform import TelegramPlatform
from producers.bots.store import ConversationStore
from producers.intake.action_page import HelpContact
from producers.intake.actions import ActionDesk
from producers.intake.app import create_app
from producers.intake.incidents import IncidentView
from producers.intake.publisher import ActionPublisher, ReportPublisher
from schemas.actions import IncidentAction
from schemas.common import Tier
from schemas.reports import ReportSubmitted
from schemas.topics import INCIDENTS_ACTIONS, REPORTS_SUBMITTED
from tests.action_support import FakeIncidents, make_state
from tests.services.intake import shipped_schools

pytestmark = pytest.mark.kafka

API_KEY = "fuzz-api-key-0f3c9a"
AUTHORITY_KEY = "fuzz-authority-key-7d21e4"
SECRET = "fuzz-secret-key-5b8e2c"
TELEGRAM_TOKEN = "123456:fuzz-telegram-token-a9c4"
TELEGRAM_SECRET = "fuzz-telegram-secret-e3f1"
CODE_KEY = b"fuzz-tracking-code-key"
EXAMPLES = 30
SECRETS = (API_KEY, AUTHORITY_KEY, SECRET, TELEGRAM_TOKEN, TELEGRAM_SECRET, CODE_KEY.decode())


@pytest.fixture(scope="module")
def prefix(kafka_bootstrap: str) -> str:
    import uuid

    name = f"fuzz{uuid.uuid4().hex[:8]}."
    ensure_topics(kafka_bootstrap, name)
    return name


@pytest.fixture(scope="module")
def intake(kafka_bootstrap: str, prefix: str) -> Iterator[TestClient]:
    reports = ReportPublisher(kafka_bootstrap, prefix, code_key=CODE_KEY)
    actions = ActionPublisher(kafka_bootstrap, prefix)
    view = IncidentView(kafka_bootstrap, prefix, poll_ms=200)
    store = ConversationStore(kafka_bootstrap, prefix, poll_ms=200)
    view.start()
    store.start()
    try:
        assert view.wait_ready(30) and store.wait_caught_up(30)
        desk = ActionDesk(
            secret_key=SECRET,
            link_max_age_s=3600,
            authority_keys={AUTHORITY_KEY: ("fuzz-police", Tier.police)},
            publisher=actions,
            incidents=FakeIncidents({"inc-known": make_state("inc-known")}),
            school_names={},
            help_contact=HelpContact("Sở GDĐT Hà Nội", "sogddt@hanoi.example"),
        )
        app = create_app(
            reports,
            {API_KEY: "fuzz-app"},
            CollectorRegistry(),
            actions=desk,
            status_view=view,
            schools=shipped_schools(),
            bots=[TelegramPlatform(TELEGRAM_TOKEN, TELEGRAM_SECRET, "http://127.0.0.1:9")],
            bot_store=store,
            lookup_rate="100000/minute",
            follow_up_rate="100000/minute",
            form_rate="100000/minute",
        )
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        view.close()
        store.close()
        reports.close()
        actions.close()


def no_secret_echoed(ctx: Any, response: Any, case: Any) -> bool | None:
    """No answer carries a key or secret the intake was configured with, whatever was sent."""
    body = response.content.decode("utf-8", "replace")
    headers = " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for secret in SECRETS:
        assert secret not in body and secret not in headers, "a response echoes a secret"
    return None


def with_keys(case: Any) -> None:
    """Half of the calls carry the right key, so that the fuzzer gets past authentication and
    reaches validation and storage; the other half carry whatever it generated."""
    if case.headers and case.headers.get("X-API-Key") and case.headers["X-API-Key"][:1] < "n":
        key = API_KEY if case.path.startswith("/v1/reports") else AUTHORITY_KEY
        case.headers["X-API-Key"] = key


def summary(exc: BaseException) -> str:
    """The kinds of failure schemathesis found and how to reproduce each, in a few lines."""
    lines = [
        line.strip(" |")
        for line in str(exc).splitlines() + [str(e) for e in getattr(exc, "exceptions", ())]
        if any(m in line for m in ("Received", "Documented", "curl", "rror", "Undocumented"))
    ]
    return "\n".join(dict.fromkeys(lines))[:1500] or repr(exc)[:500]


def test_no_operation_fails_or_says_what_it_does_not_document(intake: TestClient) -> None:
    # schemathesis's own pytest plugin does not run under pytest 9 (yet): its Python API
    # does the same, one hypothesis run per operation.
    schema = schemathesis.openapi.from_asgi("/openapi.json", intake.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert "POST /v1/reports" in labels and "POST /report" in labels
    assert any(label.startswith("POST /v1/bots/") for label in labels)
    assert any(label.startswith("POST /v1/incidents/") for label in labels)
    failures: dict[str, str] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: Any) -> None:
            with_keys(case)
            case.call_and_validate(
                checks=[not_a_server_error, status_code_conformance, content_type_conformance],
                additional_checks=[no_secret_echoed],
            )

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # gather all, then report them all
            failures[operation.label] = summary(exc)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def read_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
        isolation_level="read_committed",
    )
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


def test_nothing_half_written_after_the_fuzzing(kafka_bootstrap: str, prefix: str) -> None:
    """Runs after the fuzzing above (pytest keeps file order): whatever was stored parses."""
    for raw in read_all(kafka_bootstrap, REPORTS_SUBMITTED.name(prefix)):
        ReportSubmitted.model_validate_json(raw)
    for raw in read_all(kafka_bootstrap, INCIDENTS_ACTIONS.name(prefix)):
        IncidentAction.model_validate_json(raw)
