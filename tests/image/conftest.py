"""The image tests' figures: collected by the ``timings`` fixture, appended to
var/image/results.jsonl and shown in pytest's closing summary (where output is not captured)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import REPO

RESULTS = REPO / "var" / "image" / "results.jsonl"

#: every figure of this session, in the order measured
FIGURES: dict[str, Any] = {}


class Timings:
    """Seconds (rounded to 0.1) and sizes, by what was measured."""

    def __setitem__(self, key: str, value: Any) -> None:
        FIGURES[key] = round(value, 1) if isinstance(value, float) else value


@pytest.fixture(scope="session")
def timings() -> Iterator[Timings]:
    yield Timings()
    if FIGURES:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"at": datetime.now(UTC).isoformat(), **FIGURES}) + "\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.write_sep("-", "image timings (also in var/image/results.jsonl)")
        for key, value in FIGURES.items():
            terminalreporter.write_line(f"{key}: {value}")
