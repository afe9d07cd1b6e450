"""End to end: `escalate up` on the real broker, reports over HTTP, mail into a real SMTP server,
and the audit trail read back with `escalate audit timeline`; once on SQLite, once on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiosmtpd.controller import Controller

from tests.conftest import REPO, free_port

KEY = "e2e-key"
DIRECTORY = yaml.safe_load((REPO / "escalate" / "defaults" / "directory.yaml").read_text("utf-8"))


@dataclass
class Sink:
    """A real SMTP server (aiosmtpd) that keeps what it received."""

    mails: list[tuple[list[str], Message]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.original_content, policy=default_policy)
        with self.lock:
            self.mails.append((list(envelope.rcpt_tos), msg))
        return "250 OK"

    def for_incident(self, incident_id: str) -> dict[str, Message]:
        with self.lock:
            return {
                rcpt: msg
                for rcpts, msg in self.mails
                if msg["X-Escalate-Incident"] == incident_id
                for rcpt in rcpts
            }


def _district(school_code: str) -> dict[str, Any]:
    for district in DIRECTORY["districts"]:
        for school in district["schools"]:
            if school["code"] == school_code:
                return dict(district, school=school)
    raise KeyError(school_code)


def expected_recipients(school_code: str, tiers: list[str]) -> set[str]:
    """Addresses the default directory gives each tier, computed independently of the router."""
    d = _district(school_code)
    by_tier = {
        "school": d["school"]["leadership_emails"],
        "district_office": d["office"]["emails"],
        "city_office": DIRECTORY["city_office"]["emails"],
        "police": d["police"]["emails"] + DIRECTORY["police"]["emails"],
    }
    return {email for tier in tiers for email in by_tier[tier]}


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/audit.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, isolation: str, database_url: str, tmp_path: Path
) -> Iterator[tuple[str, Sink, dict[str, str]]]:
    with running_pipeline(kafka_bootstrap, isolation, database_url, tmp_path) as running:
        yield running


@contextlib.contextmanager
def running_pipeline(
    kafka_bootstrap: str,
    isolation: str,
    database_url: str,
    tmp_path: Path,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[str, Sink, dict[str, str]]]:
    """`escalate up` with its own SMTP sink; ``extra_env`` adds or overrides settings."""
    sink = Sink()
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    http_port = free_port()
    env = {
        **os.environ,
        "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ESCALATE_TOPIC_PREFIX": f"{isolation}.",
        "ESCALATE_APP_ID": isolation,
        "ESCALATE_DATABASE_URL": database_url,
        "ESCALATE_SMTP_HOST": "127.0.0.1",
        "ESCALATE_SMTP_PORT": str(smtp.port),
        "ESCALATE_HTTP_PORT": str(http_port),
        "ESCALATE_INTAKE_API_KEYS": f"e2e={KEY}",
        "ESCALATE_VAR_DIR": str(tmp_path / "var"),
        "ESCALATE_METRICS_PORT": "0",
        **(extra_env or {}),
    }
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "escalate.cli", "up"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            base = f"http://127.0.0.1:{http_port}"
            deadline = time.monotonic() + 120
            while "ready. Web form" not in log_path.read_text("utf-8", "replace"):
                assert proc.poll() is None, log_path.read_text("utf-8", "replace")
                assert time.monotonic() < deadline, "pipeline not ready in 120 s"
                time.sleep(0.5)
            yield base, sink, env
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            smtp.stop()
            output = log_path.read_text("utf-8", "replace")
            assert code == 0, output
            assert "stopped" in output


def post(base: str, report: dict[str, Any]) -> dict[str, str]:
    resp = httpx.post(f"{base}/v1/reports", json=report, headers={"X-API-Key": KEY}, timeout=30)
    assert resp.status_code == 202, resp.text
    body: dict[str, str] = resp.json()
    return body


def wait_for(check: Any, timeout_s: float = 90, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def timeline(env: dict[str, str], ref: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "escalate.cli", "audit", "timeline", ref],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        return []
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_reports_reach_exactly_the_policy_recipients_and_the_audit_trail(
    pipeline: tuple[str, Sink, dict[str, str]],
) -> None:
    base, sink, env = pipeline
    contact = {"name": "Trần Thị B", "phone": "0987 654 321", "email": "me@parent.example"}
    critical = post(
        base,
        {
            "channel": "app",
            "reporter_role": "parent",
            "school_code": "HN-DD-THCS-003",
            "description": "Một người lạ đang đòi gặp con tôi ngay tối nay, cháu rất sợ.",
            "immediate_danger": True,
            "contact": contact,
        },
    )
    medium = post(
        base,
        {
            "channel": "telegram",
            "reporter_role": "teacher",
            "school_code": "HN-BD-THCS-001",
            "description": "Link Zoom và mật khẩu lớp 8A bị đăng lên một nhóm Facebook công khai.",
            "category_hint": "credential_leak",
        },
    )
    unknown = post(
        base,
        {
            "channel": "web_form",
            "reporter_role": "anonymous",
            "school_code": "HN-ZZ-NOWHERE-1",
            "description": "Mật khẩu lớp học trực tuyến bị lộ trên mạng.",
            "category_hint": "credential_leak",
        },
    )
    crit_incident = f"inc-{critical['report_id']}"
    med_incident = f"inc-{medium['report_id']}"
    unk_incident = f"inc-{unknown['report_id']}"

    crit_want = expected_recipients(
        "HN-DD-THCS-003", ["school", "district_office", "city_office", "police"]
    )
    med_want = expected_recipients("HN-BD-THCS-001", ["school"])
    desk = set(DIRECTORY["city_office"]["intake_desk_emails"])
    wait_for(lambda: set(sink.for_incident(crit_incident)) == crit_want, what="critical mails")
    wait_for(lambda: set(sink.for_incident(med_incident)) == med_want, what="medium mails")
    wait_for(lambda: set(sink.for_incident(unk_incident)) == desk, what="intake desk mail")

    crit_mails = sink.for_incident(crit_incident)
    school_mail = crit_mails[_district("HN-DD-THCS-003")["school"]["leadership_emails"][0]]
    police_mail = crit_mails[DIRECTORY["police"]["emails"][0]]
    school_body = school_mail.get_body().get_content()  # type: ignore[union-attr]
    police_body = police_mail.get_body().get_content()  # type: ignore[union-attr]
    for body in (school_body, police_body):
        assert critical["report_id"] in body
        assert "critical" in body.lower()
        assert "Một người lạ đang đòi gặp con tôi" in body
    assert contact["phone"] not in school_body and contact["email"] not in school_body
    assert contact["phone"] in police_body
    unknown_body = next(iter(sink.for_incident(unk_incident).values())).get_body().get_content()  # type: ignore[union-attr]
    assert "HN-ZZ-NOWHERE-1" in unknown_body

    # Nothing was sent twice, and nobody else got mail about these incidents.
    with sink.lock:
        ids = [m["Message-ID"] for _, m in sink.mails]
    assert len(ids) == len(set(ids))

    for ref, want in (
        (critical["tracking_code"], len(crit_want)),
        (medium["report_id"], len(med_want)),
        (unk_incident, len(desk)),
    ):
        events = wait_for(
            lambda ref=ref, want=want: (
                (ev := timeline(env, ref))
                and sum(e["event"] == "notified" for e in ev) == want
                and ev
            ),
            what=f"audit timeline of {ref}",
        )
        kinds = [e["event"] for e in events]
        assert kinds[:3] == ["received", "classified", "routed"], kinds
        assert set(kinds[3:]) == {"notified"}
        assert all({"at", "event", "incident_id"} <= set(e) for e in events)
        assert [e["at"] for e in events] == sorted(e["at"] for e in events)
        assert len({e["incident_id"] for e in events}) == 1
        flat = json.dumps(events, ensure_ascii=False)
        assert contact["phone"] not in flat and "Một người lạ" not in flat
