"""How long from 'accepted' (HTTP 202) to the first e-mail in an inbox, through the whole pipeline.

Starts `escalate up` against a real broker (ESCALATE_KAFKA_BOOTSTRAP_SERVERS, or the local one it
starts itself), a real SMTP server (aiosmtpd) as the inbox, posts N reports one after another and
prints percentiles of the report-to-first-mail latency and the intake's own 202 latency.

    .venv/bin/python bench/pipeline_latency.py --reports 200              # a burst
    .venv/bin/python bench/pipeline_latency.py --reports 40 --interval 0.5  # one at a time

Each report names a school of its own (codes outside the directory, so the city intake desk is
told): reports of one school within the grouping window would rightly become one incident, and
this measures the way of a report that opens one.

A benchmark, not a test: numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller

DESCRIPTIONS = [
    "Có người lạ vào phòng học trực tuyến bật nhạc ồn ào phá lớp.",
    "Mật khẩu và link Zoom của lớp bị đăng lên một nhóm Facebook.",
    "Một người lạ nhắn tin đòi con tôi gửi ảnh riêng tư và hẹn gặp riêng.",
    "cac ban trong lop goi em la do ngu trong nhom chat moi ngay",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Inbox:
    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        for line in envelope.original_content.split(b"\r\n"):
            if line.lower().startswith(b"x-escalate-incident:"):
                incident = line.split(b":", 1)[1].strip().decode()
                with self.lock:
                    self.first_seen.setdefault(incident, now)
                break
        return "250 OK"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument(
        "--interval", type=float, default=0.0, help="seconds between reports (0: back to back)"
    )
    args = parser.parse_args()

    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    http_port = free_port()
    run_id = f"bench{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="escalate-bench-"))
    key = "bench-key"
    env = {
        **os.environ,
        "ESCALATE_TOPIC_PREFIX": f"{run_id}.",
        "ESCALATE_APP_ID": run_id,
        "ESCALATE_DATABASE_URL": f"sqlite:///{workdir}/audit.db",
        "ESCALATE_SMTP_HOST": "127.0.0.1",
        "ESCALATE_SMTP_PORT": str(smtp.port),
        "ESCALATE_HTTP_PORT": str(http_port),
        "ESCALATE_INTAKE_API_KEYS": f"bench={key}",
        "ESCALATE_VAR_DIR": str(workdir / "var"),
        "ESCALATE_METRICS_PORT": "0",
    }
    log_path = workdir / "up.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "escalate.cli", "up"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    try:
        deadline = time.monotonic() + 180
        while "ready. Web form" not in log_path.read_text("utf-8", "replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text("utf-8", "replace"), file=sys.stderr)
                return 1
            time.sleep(0.5)
        base = f"http://127.0.0.1:{http_port}"
        sent: dict[str, float] = {}
        accept_s: list[float] = []
        with httpx.Client(timeout=30) as client:
            for i in range(args.reports):
                body = {
                    "channel": "app",
                    "reporter_role": "teacher",
                    "school_code": f"HN-BENCH-{i:05d}",
                    "description": DESCRIPTIONS[i % len(DESCRIPTIONS)],
                }
                started = time.monotonic()
                resp = client.post(f"{base}/v1/reports", json=body, headers={"X-API-Key": key})
                accepted = time.monotonic()
                resp.raise_for_status()
                accept_s.append(accepted - started)
                sent[f"inc-{resp.json()['report_id']}"] = accepted
                if args.interval:
                    time.sleep(args.interval)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with inbox.lock:
                if all(i in inbox.first_seen for i in sent):
                    break
            time.sleep(0.2)
        with inbox.lock:
            latency = [inbox.first_seen[i] - t for i, t in sent.items() if i in inbox.first_seen]
        missing = len(sent) - len(latency)
        print(f"reports: {len(sent)}, mailed: {len(latency)}, missing: {missing}")
        for name, values in (("202 accepted", accept_s), ("accepted -> first mail", latency)):
            if values:
                print(
                    f"{name:24s} p50 {statistics.median(values) * 1000:7.1f} ms   "
                    f"p95 {percentile(values, 0.95) * 1000:7.1f} ms   "
                    f"p99 {percentile(values, 0.99) * 1000:7.1f} ms   "
                    f"max {max(values) * 1000:7.1f} ms"
                )
        return 0 if missing == 0 else 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        smtp.stop()


if __name__ == "__main__":
    sys.exit(main())
