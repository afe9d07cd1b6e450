"""Shared fixtures: one real broker per test session, isolation by topic prefix and app id."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import kafka as kafka_service
from tests.services import postgres as postgres_service

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    bootstrap = kafka_service.broker_for_tests()
    yield bootstrap
    kafka_service.stop_test_broker()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = postgres_service.postgres_for_tests()
    yield url
    postgres_service.stop()


@pytest.fixture
def isolation() -> str:
    """A fresh name used as topic prefix and app id, so tests never share topics or groups."""
    return f"t{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def escalate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The `escalate` command as an operator runs it, with exactly ``env`` as its environment."""
    return subprocess.run(
        [sys.executable, "-m", "escalate.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
