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
import itertools
import json
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
        self.first_seen_wall: dict[str, float] = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        for line in envelope.original_content.split(b"\r\n"):
            if line.lower().startswith(b"x-escalate-incident:"):
                incident = line.split(b":", 1)[1].strip().decode()
                with self.lock:
                    self.first_seen.setdefault(incident, now)
                    self.first_seen_wall.setdefault(incident, time.time())
                break
        return "250 OK"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


HOPS = (
    ("reports.submitted.v1", "submitted"),
    ("reports.classified.v1", "classified"),
    ("incidents.classified.v1", "incident opened"),
    ("notifications.urgent.v1", "notice requested"),
    ("notifications.requested.v1", "notice requested"),
)


def hop_times(bootstrap: str, prefix: str) -> dict[str, dict[str, float]]:
    """When each incident's first record reached each topic (the producers' CreateTime, s).

    The difference between two stages is the later stage's wait for the earlier one's
    transaction to commit, its fetch and its own work: where the latency goes, hop by hop.
    """
    from kafka import KafkaConsumer

    seen: dict[str, dict[str, float]] = {}
    for topic, stage in HOPS:
        consumer = KafkaConsumer(
            f"{prefix}{topic}",
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=3000,
        )
        for record in consumer:
            value = json.loads(record.value)
            incident = value.get("incident_id") or f"inc-{value.get('report_id')}"
            at = seen.setdefault(incident, {})
            at[stage] = min(at.get(stage, float("inf")), record.timestamp / 1000)
        consumer.close()
    return seen


def print_hops(seen: dict[str, dict[str, float]], mailed: dict[str, float]) -> None:
    stages = ["submitted", "classified", "incident opened", "notice requested", "mailed"]
    for incident, at in seen.items():
        if incident in mailed:
            at["mailed"] = mailed[incident]
    for earlier, later in itertools.pairwise(stages):
        gaps = [at[later] - at[earlier] for at in seen.values() if earlier in at and later in at]
        if gaps:
            print(
                f"  {earlier:>16s} -> {later:16s} p50 {statistics.median(gaps) * 1000:7.1f} ms"
                f"   p99 {percentile(gaps, 0.99) * 1000:7.1f} ms   ({len(gaps)})"
            )


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
        # "ready" means the intake answers; the state workers may still be taking their
        # partitions over. Wait until a few reports have gone all the way through.
        warm: list[str] = []
        with httpx.Client(timeout=30) as client:
            for i in range(3):
                body = {
                    "channel": "app",
                    "reporter_role": "teacher",
                    "school_code": f"HN-WARM-{i:05d}",
                    "description": DESCRIPTIONS[i % len(DESCRIPTIONS)],
                }
                resp = client.post(f"{base}/v1/reports", json=body, headers={"X-API-Key": key})
                resp.raise_for_status()
                warm.append(f"inc-{resp.json()['report_id']}")
        deadline = time.monotonic() + 180
        while not all(i in inbox.first_seen for i in warm):
            if time.monotonic() > deadline:
                print("the warm-up reports were never mailed", file=sys.stderr)
                return 1
            time.sleep(0.2)
        with inbox.lock:
            for i in warm:
                inbox.first_seen.pop(i, None)
                inbox.first_seen_wall.pop(i, None)
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
        bootstrap = env.get("ESCALATE_KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
        print("hop by hop (record timestamps; mail: the sink's clock):")
        with inbox.lock:
            mailed = dict(inbox.first_seen_wall)
        print_hops(hop_times(bootstrap, f"{run_id}."), mailed)
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
