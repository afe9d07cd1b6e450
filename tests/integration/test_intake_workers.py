"""Several intake processes on one port (``ESCALATE_INTAKE_WORKERS``), against the real broker:
every 202 is a stored report, the metrics count all workers' requests, and a worker that dies
is replaced while the others go on accepting (issue 11)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from escalate.topics_admin import ensure_topics
from schemas.reports import ReportSubmitted
from schemas.topics import REPORTS_SUBMITTED
from tests.conftest import free_port
from tests.integration.test_intake import read_topic
from tests.services.pipeline import wait_for

pytestmark = pytest.mark.kafka

KEY = "workers-key"
WORKERS = 2


@dataclass
class Intake:
    base: str
    process: subprocess.Popen[bytes]
    log: Path
    topic: str

    def workers(self) -> list[int]:
        """Process ids of the live workers, the children uvicorn's supervisor spawned.

        multiprocessing's spawn start method runs each as ``python -c "from
        multiprocessing.spawn import spawn_main; ..."``; its resource tracker is no worker, and
        a worker not reaped yet is a zombie.
        """
        children: list[int] = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            children += [int(pid) for pid in (task / "children").read_text().split()]
        live = []
        for pid in children:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if state != "Z" and b"spawn_main" in cmdline:
                live.append(pid)
        return live


@pytest.fixture
def intake(kafka_bootstrap: str, isolation: str, tmp_path: Path) -> Iterator[Intake]:
    prefix = f"{isolation}."
    ensure_topics(kafka_bootstrap, prefix)
    port = free_port()
    env = {
        **os.environ,
        "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ESCALATE_TOPIC_PREFIX": prefix,
        "ESCALATE_APP_ID": isolation,
        "ESCALATE_HTTP_PORT": str(port),
        "ESCALATE_INTAKE_API_KEYS": f"test-app={KEY}",
        "ESCALATE_INTAKE_WORKERS": str(WORKERS),
        "ESCALATE_VAR_DIR": str(tmp_path / "var"),
    }
    log = tmp_path / "intake.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "escalate.cli", "run", "intake"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Intake(f"http://127.0.0.1:{port}", process, log, REPORTS_SUBMITTED.name(prefix))
    try:
        wait_for(lambda: len(running.workers()) == WORKERS, timeout_s=60, what="both workers")
        # Ready on every connection tried: each worker answers some of them.
        wait_for(lambda: all(_ready(running.base) for _ in range(8)), timeout_s=90, what="ready")
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def post_reports(base: str, count: int, tag: str) -> list[str]:
    """Post ``count`` reports at once, each on a connection of its own; their report ids."""

    def post(n: int) -> str:
        body = {
            "channel": "app",
            "reporter_role": "teacher",
            "school_code": "HN-BD-THCS-001",
            "description": f"Người lạ vào lớp học trực tuyến {tag} số {n}, bật nhạc ồn ào.",
        }
        response = httpx.post(
            f"{base}/v1/reports", json=body, headers={"X-API-Key": KEY}, timeout=30
        )
        assert response.status_code == 202, response.text
        report_id: str = response.json()["report_id"]
        return report_id

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(post, range(count)))


def accepted_count(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "escalate_intake_reports_total"
        and sample.labels.get("outcome") == "accepted"
    )


def stored_ids(bootstrap: str, topic: str) -> set[str]:
    return {ReportSubmitted.model_validate_json(v).report_id for v in read_topic(bootstrap, topic)}


def test_every_worker_stores_what_it_accepts_and_the_metrics_add_up(
    intake: Intake, kafka_bootstrap: str
) -> None:
    accepted = post_reports(intake.base, 60, "đợt một")
    assert len(set(accepted)) == 60
    assert set(accepted) <= stored_ids(kafka_bootstrap, intake.topic)
    # Whichever worker answers the scrape, it counts the requests every worker served.
    for _ in range(6):
        assert accepted_count(intake.base) == 60


def test_a_worker_that_dies_is_replaced_and_the_others_keep_accepting(
    intake: Intake, kafka_bootstrap: str
) -> None:
    before = intake.workers()
    os.kill(before[0], signal.SIGKILL)
    # New connections go to the live worker while the supervisor starts another.
    accepted = post_reports(intake.base, 30, "đợt hai")
    wait_for(
        lambda: len(intake.workers()) == WORKERS and before[0] not in intake.workers(),
        timeout_s=60,
        what="a new worker in place of the killed one",
    )
    accepted += post_reports(intake.base, 30, "đợt ba")
    assert set(accepted) <= stored_ids(kafka_bootstrap, intake.topic)
    assert intake.process.poll() is None
