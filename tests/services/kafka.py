"""The Kafka broker the integration tests talk to.

Tests get their own broker on a dedicated port pair (19092/19093 unless overridden), so a
developer's broker on 9092 is never touched or wiped. The jar cache under ``kafka_home`` is
shared with it. A broker started here gets a fresh data directory and is stopped when the
test process exits; a broker that was already answering on the test port is reused as it is.
"""

from __future__ import annotations

import atexit
import os

from escalate import kafka_local
from escalate.settings import Settings

TEST_KAFKA_PORT = int(os.environ.get("ESCALATE_TEST_KAFKA_PORT", "19092"))
TEST_CONTROLLER_PORT = int(
    os.environ.get("ESCALATE_TEST_KAFKA_CONTROLLER_PORT", str(TEST_KAFKA_PORT + 1))
)

_atexit_registered = False


def broker_settings_for_tests() -> Settings:
    """Settings for the test broker: the usual kafka_home, the test ports."""
    return Settings(
        kafka_bootstrap_servers=None,
        kafka_port=TEST_KAFKA_PORT,
        kafka_controller_port=TEST_CONTROLLER_PORT,
    )


def broker_for_tests(timeout_s: float = 180) -> str:
    """Bootstrap address of a running broker, starting the local test broker when needed."""
    global _atexit_registered
    external = os.environ.get("ESCALATE_KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        return external
    settings = broker_settings_for_tests()
    if kafka_local.broker_answers(kafka_local.bootstrap_address(settings)):
        return kafka_local.bootstrap_address(settings)
    bootstrap = kafka_local.start(settings, timeout_s=timeout_s, fresh=True)
    if not _atexit_registered:
        # Backstop for crashed or interrupted sessions; the fixture's own teardown comes first.
        atexit.register(stop_test_broker)
        _atexit_registered = True
    return bootstrap


def stop_test_broker() -> None:
    """Stop the broker on the test port if kafka_local started it; no-op otherwise."""
    if os.environ.get("ESCALATE_KAFKA_BOOTSTRAP_SERVERS", "").strip():
        return
    kafka_local.stop(broker_settings_for_tests())
