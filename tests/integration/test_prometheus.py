"""Monitoring against the real thing: `escalate up` scraped by a real Prometheus server.

The committed deploy/prometheus/prometheus.yml is used with only its ports (and intervals)
changed, together with the committed alert rules, so this checks what an operator will run:
every component is scraped, deliveries show up as counters, a refused recipient fires the
alert that pages someone, and every dashboard query is valid PromQL on this server.
Also runs promtool over the config, the rules and their unit tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from aiosmtpd.controller import Controller

from escalate.components import METRICS_OFFSET
from tests.conftest import REPO, free_port

KEY = "prom-key"
PROM_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "escalate-dashboard.json"
DIRECTORY = yaml.safe_load((REPO / "escalate" / "defaults" / "directory.yaml").read_text("utf-8"))
INSTALL_HINT = (
    "is not installed: install Debian's prometheus package"
    " (apt-get install -y prometheus), which provides both prometheus and promtool"
)

T = TypeVar("T")


def require_binary(name: str) -> str:
    """Path of a Prometheus tool; a missing tool fails the test (it must never be skipped)."""
    path = shutil.which(name) or (
        f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
    )
    if path is None:
        pytest.fail(f"{name} {INSTALL_HINT}")
    return path


# --- promtool ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts_the_committed_files(args: list[str]) -> None:
    promtool = require_binary("promtool")
    proc = subprocess.run(
        [promtool, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


# --- the running pipeline ---------------------------------------------------------------------


def police_emails(district_code: str) -> set[str]:
    district = next(d for d in DIRECTORY["districts"] if d["code"] == district_code)
    return set(district["police"]["emails"]) | set(DIRECTORY["police"]["emails"])


def delivered_emails() -> tuple[set[str], set[str]]:
    """Who gets mail about each test report, police apart (computed from the directory)."""
    district = next(d for d in DIRECTORY["districts"] if d["code"] == "HN-DD")
    school = next(s for s in district["schools"] if s["code"] == "HN-DD-THCS-003")
    city = DIRECTORY["city_office"]
    critical = set(school["leadership_emails"]) | set(district["office"]["emails"])
    return critical | set(city["emails"]), set(city["intake_desk_emails"])


REFUSED = police_emails("HN-DD")
CRITICAL_MAILED, DESK_MAILED = delivered_emails()


@dataclass
class Sink:
    """A real SMTP server that refuses the police mailboxes (550) and keeps everything else."""

    refused: set[str]
    accepted: list[tuple[list[str], Message]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address.lower() in self.refused:
            with self.lock:
                self.rejected.append(address.lower())
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.original_content, policy=default_policy)
        with self.lock:
            self.accepted.append((list(envelope.rcpt_tos), msg))
        return "250 OK"

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return sum(len(r) for r, _ in self.accepted), len(self.rejected)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_metrics_base() -> int:
    """A free port whose next three neighbours are free too (ESCALATE_METRICS_PORT + 1..3)."""
    for _ in range(100):
        base = free_port()
        if base + max(METRICS_OFFSET.values()) < 65536 and all(
            _bindable(base + offset) for offset in METRICS_OFFSET.values()
        ):
            return base
    raise RuntimeError("no block of four free ports found")


def wait_for(check: Callable[[], T | None], timeout_s: float = 120, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@dataclass
class Running:
    intake: str
    prometheus: str
    sink: Sink
    ports: dict[str, int]


def prometheus_config(tmp_path: Path, ports: dict[str, int]) -> Path:
    """The committed prometheus.yml with this run's ports and one-second intervals."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text("utf-8"))
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(PROM_DIR / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        for static in job["static_configs"]:
            port = ports[static["labels"]["component"]]
            static["targets"] = [f"127.0.0.1:{port}"]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
    return path


def stop(proc: subprocess.Popen[bytes], sig: int, timeout_s: float) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture
def running(kafka_bootstrap: str, isolation: str, tmp_path: Path) -> Iterator[Running]:
    prometheus_bin = require_binary("prometheus")
    sink = Sink(refused=REFUSED)
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    http_port = free_port()
    base = free_metrics_base()
    ports = {"intake": http_port, **{n: base + off for n, off in METRICS_OFFSET.items()}}
    env = {
        **os.environ,
        "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ESCALATE_TOPIC_PREFIX": f"{isolation}.",
        "ESCALATE_APP_ID": isolation,
        "ESCALATE_DATABASE_URL": f"sqlite:///{tmp_path}/audit.db",
        "ESCALATE_SMTP_HOST": "127.0.0.1",
        "ESCALATE_SMTP_PORT": str(smtp.port),
        "ESCALATE_HTTP_PORT": str(http_port),
        "ESCALATE_INTAKE_API_KEYS": f"prom={KEY}",
        "ESCALATE_VAR_DIR": str(tmp_path / "var"),
        "ESCALATE_METRICS_PORT": str(base),
    }
    up_log = tmp_path / "up.log"
    prom_log = tmp_path / "prometheus.log"
    prom_port = free_port()
    pipeline: subprocess.Popen[bytes] | None = None
    prometheus: subprocess.Popen[bytes] | None = None
    with up_log.open("wb") as up_out, prom_log.open("wb") as prom_out:
        try:
            pipeline = subprocess.Popen(
                [sys.executable, "-m", "escalate.cli", "up"],
                env=env,
                stdout=up_out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
            prometheus = subprocess.Popen(
                [
                    prometheus_bin,
                    f"--config.file={prometheus_config(tmp_path, ports)}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=prom_out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
            prom_url = f"http://127.0.0.1:{prom_port}"

            def both_ready() -> bool:
                assert pipeline is not None and prometheus is not None
                assert pipeline.poll() is None, up_log.read_text("utf-8", "replace")
                assert prometheus.poll() is None, prom_log.read_text("utf-8", "replace")
                if "ready. Web form" not in up_log.read_text("utf-8", "replace"):
                    return False
                try:
                    with urllib.request.urlopen(f"{prom_url}/-/ready", timeout=5) as resp:
                        return bool(resp.status == 200)
                except (urllib.error.URLError, OSError):
                    return False

            wait_for(both_ready, timeout_s=150, what="pipeline and Prometheus ready")
            yield Running(f"http://127.0.0.1:{http_port}", prom_url, sink, ports)
        finally:
            prom_code = stop(prometheus, signal.SIGTERM, 30) if prometheus else 0
            up_code = stop(pipeline, signal.SIGINT, 60) if pipeline else 0
            smtp.stop()
            assert prom_code == 0, prom_log.read_text("utf-8", "replace")
            assert up_code == 0, up_log.read_text("utf-8", "replace")


def query(prom: str, promql: str) -> list[dict[str, Any]]:
    """Instant query; fails the test on a PromQL error rather than returning nothing."""
    url = f"{prom}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{promql!r}: {exc.code} {exc.read().decode()}") from exc
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def by_label(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1]) for r in result
    }


def api(prom: str, path: str) -> Any:
    with urllib.request.urlopen(f"{prom}{path}", timeout=10) as resp:
        return json.load(resp)["data"]


def post(base: str, report: dict[str, Any]) -> dict[str, str]:
    resp = httpx.post(f"{base}/v1/reports", json=report, headers={"X-API-Key": KEY}, timeout=30)
    assert resp.status_code == 202, resp.text
    body: dict[str, str] = resp.json()
    return body


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel, refId, expression) for every dashboard query, Grafana variables made durations."""
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$__range", "10m")
            found.append((panel["title"], target["refId"], expr))
    return found


# Queries with nothing to show in this run: nothing was refused, and only the notifier
# dead-lettered anything.
EXPECTED_EMPTY = {
    ("Refused reports per minute", "A"),
    ("Dead letters", "B"),
    ("Audit events written per minute by type", "B"),
}


@pytest.mark.kafka
def test_prometheus_scrapes_the_pipeline_and_alerts_on_a_failed_notification(
    running: Running,
) -> None:
    prom = running.prometheus

    def all_up() -> dict[tuple[str, ...], float] | None:
        found = by_label(query(prom, 'up{job="escalate"}'), "component")
        return found if found == {(c,): 1.0 for c in running.ports} else None

    wait_for(all_up, what="up == 1 for intake, processors, notifier and audit")
    targets = api(prom, "/api/v1/targets")["activeTargets"]
    assert {t["labels"]["component"]: t["health"] for t in targets} == {
        c: "up" for c in running.ports
    }

    post(
        running.intake,
        {
            "channel": "app",
            "reporter_role": "parent",
            "school_code": "HN-DD-THCS-003",
            "description": "Một người lạ đang đòi gặp con tôi ngay tối nay, cháu rất sợ.",
            "immediate_danger": True,
            "contact": {"name": "Trần Thị B", "phone": "0987 654 321"},
        },
    )
    post(
        running.intake,
        {
            "channel": "telegram",
            "reporter_role": "anonymous",
            "school_code": "HN-ZZ-NOWHERE-1",
            "description": "Mật khẩu lớp học trực tuyến bị lộ trên mạng.",
            "category_hint": "credential_leak",
        },
    )

    # Every police mailbox refused the critical incident; everyone else got mail.
    wait_for(lambda: set(running.sink.rejected) == REFUSED, what="police recipients refused")
    # The refused notifications of a critical incident reach the city intake desk as one plain
    # mail (issue 7), besides the desk's own mail about the unknown school.
    delivered = len(CRITICAL_MAILED) + len(DESK_MAILED)
    wait_for(
        lambda: running.sink.counts() == (delivered + len(DESK_MAILED), len(REFUSED)),
        what="mails delivered",
    )
    with running.sink.lock:
        fallback = [
            m for _, m in running.sink.accepted if "Notification not delivered" in str(m["Subject"])
        ]
    assert len(fallback) == 1
    with running.sink.lock:
        assert {
            r for rcpts, _ in running.sink.accepted for r in rcpts
        } == CRITICAL_MAILED | DESK_MAILED

    def notification_counts() -> dict[tuple[str, ...], float] | None:
        found = by_label(
            query(prom, "sum by (tier, status) (escalate_notifications_total)"), "tier", "status"
        )
        # Every tier/severity/status series starts at zero; only the non-zero ones count here.
        failed = {k: v for k, v in found.items() if k[1] == "failed" and v > 0}
        ok = sum(v for k, v in found.items() if k[1] == "delivered")
        return found if failed == {("police", "failed"): len(REFUSED)} and ok == delivered else None

    counts = wait_for(notification_counts, what="escalate_notifications_total in Prometheus")
    assert {tier for (tier, status), n in counts.items() if status == "delivered" and n > 0} == {
        "school",
        "district_office",
        "city_office",
    }

    accepted = by_label(query(prom, 'escalate_intake_reports_total{outcome="accepted"}'), "channel")
    assert accepted == {("app",): 1.0, ("telegram",): 1.0}
    # Each component is scraped on its own clock (every second here): the notifier's figures
    # above may be newer than the processors' last scrape, so wait for theirs too.
    wait_for(
        lambda: (
            by_label(query(prom, "escalate_unknown_school_total"), "component")
            == {("processors",): 1.0}
        ),
        what="escalate_unknown_school_total in Prometheus",
    )
    severities = by_label(
        query(prom, "sum by (severity) (escalate_reports_classified_total)"), "severity"
    )
    assert severities.get(("critical",)) == 1.0 and sum(severities.values()) == 2.0
    versions = query(prom, "escalate_policy_loaded_timestamp_seconds")
    assert len(versions) == 1 and versions[0]["metric"]["version"]
    assert query(prom, "escalate_notification_send_seconds_count")

    # The refusal pages: the notification alert and the notifier's dead letter both fire.
    def firing() -> dict[str, dict[str, str]] | None:
        alerts = api(prom, "/api/v1/alerts")["alerts"]
        active = {a["labels"]["alertname"]: a["labels"] for a in alerts if a["state"] == "firing"}
        wanted = {"EscalateNotificationFailed", "EscalateDeadLetters"}
        return active if wanted <= set(active) else None

    active = wait_for(firing, what="alerts firing")
    assert active is not None
    assert active["EscalateNotificationFailed"]["tier"] == "police"
    assert active["EscalateNotificationFailed"]["severity"] == "critical"
    assert active["EscalateDeadLetters"]["stage"] == "notifier"
    assert active["EscalateDeadLetters"]["reason"] == "undeliverable"
    assert "EscalateComponentDown" not in active
    assert "EscalateIntakeUnavailable" not in active

    # The committed rules load and evaluate cleanly on this server.
    groups = api(prom, "/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 8
    assert [r["name"] for r in rules if r["health"] != "ok"] == []

    # Every dashboard query is valid PromQL here, and each one that should has data.
    queries = dashboard_queries()

    def only_expected_empty() -> bool:
        empty = {(title, ref) for title, ref, expr in queries if not query(prom, expr)}
        return empty <= EXPECTED_EMPTY

    wait_for(only_expected_empty, timeout_s=60, what="data in every dashboard panel")

    # No label anywhere carries report text or the reporter's contact details.
    everything = json.dumps(query(prom, '{__name__=~"escalate_.+"}'), ensure_ascii=False)
    for secret in ("Một người lạ", "0987 654 321", "Trần Thị B", "Mật khẩu"):
        assert secret not in everything
