"""`escalate health`: the image's HEALTHCHECK probes the component `escalate run` started there."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from escalate.cli import main
from escalate.components import METRICS_OFFSET


class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"# metrics\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def notifier_metrics(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A stand-in notifier metrics endpoint; the settings point every port near it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = server.server_address[1] - METRICS_OFFSET["notifier"]
    monkeypatch.setenv("ESCALATE_METRICS_PORT", str(base))
    monkeypatch.setenv("ESCALATE_HTTP_PORT", "1")  # nothing listens there
    monkeypatch.setenv("ESCALATE_VAR_DIR", str(tmp_path))
    yield tmp_path
    server.shutdown()


def test_a_named_component_is_probed_on_its_own_port(notifier_metrics: Path) -> None:
    assert main(["health", "notifier", "--timeout", "2"]) == 0
    assert main(["health", "intake", "--timeout", "2"]) == 1


def test_without_a_name_the_component_run_here_is_probed(notifier_metrics: Path) -> None:
    marker = notifier_metrics / "component"
    marker.write_text("processors\n", "utf-8")  # `escalate run processors` ran here...
    assert main(["health", "--timeout", "2"]) == 1  # ...and another component's port is no proof
    marker.write_text("notifier\n", "utf-8")
    assert main(["health", "--timeout", "2"]) == 0


def test_without_a_name_or_a_marker_any_component_will_do(notifier_metrics: Path) -> None:
    assert main(["health", "--timeout", "2"]) == 0
