"""Mails per recipient for a burst of reports about one event, through the whole pipeline.

Starts `escalate up` (real broker, a real SMTP server as the inbox), posts N reports of one Zoom
intrusion at one school within seconds, waits until the inbox has been quiet for a while, and
prints how many mails of each kind each address got. Run it on two checkouts to compare: before
grouping every report was an incident of its own (N first notices per address); with grouping,
one first notice per address.

    .venv/bin/python bench/grouping_burst.py --reports 30

A benchmark, not a test: the numbers are what one run on this machine gave.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from email import message_from_bytes
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# One stranger in one Zoom class, as pupils and parents write it.
WORDINGS = [
    "Có người lạ vào lớp Zoom https://us05web.zoom.us/j/81234567890 bật nhạc và chửi bậy",
    "co nguoi la vao phong zoom 812 3456 7890 chui bay, co giao phai tat mic ca lop",
    "Con tôi kể trong giờ học trực tuyến (ID: 812 3456 7890) có kẻ lạ vẽ bậy lên màn hình.",
    "A stranger joined our class meeting zoom.us/j/81234567890 and shared rude pictures",
    "lop 7A bi pha, zoom id 81234567890, ai do vao noi tuc",
    "Phòng học 812-3456-7890 bị người ngoài vào quấy rối, cô giáo đã kết thúc buổi học.",
]


class Inbox:
    def __init__(self) -> None:
        self.mails: list[tuple[float, str, list[str]]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.original_content)
        with self.lock:
            self.mails.append(
                (time.monotonic(), str(msg["X-Escalate-Kind"]), list(envelope.rcpt_tos))
            )
        return "250 OK"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=30)
    parser.add_argument("--quiet", type=float, default=15.0, help="seconds without mail to stop")
    args = parser.parse_args()

    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    http_port = free_port()
    run_id = f"burst{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="escalate-burst-"))
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
        started = time.monotonic()
        with httpx.Client(timeout=30) as client:
            for i in range(args.reports):
                body = {
                    "channel": "web_form",
                    "reporter_role": "student" if i % 2 else "parent",
                    "school_code": "HN-BD-THCS-001",
                    "description": WORDINGS[i % len(WORDINGS)],
                }
                resp = client.post(f"{base}/v1/reports", json=body, headers={"X-API-Key": key})
                resp.raise_for_status()
        sent_s = time.monotonic() - started
        # Done when the first mail has come and none has followed for --quiet seconds.
        while True:
            time.sleep(1)
            with inbox.lock:
                last = inbox.mails[-1][0] if inbox.mails else None
            if last is not None and time.monotonic() - last > args.quiet:
                break
            if time.monotonic() - started > 300:
                break
        per_address: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        with inbox.lock:
            for _, kind, rcpts in inbox.mails:
                for rcpt in rcpts:
                    per_address[rcpt][kind] += 1
        print(f"{args.reports} reports of one event posted in {sent_s:.1f} s")
        for address, kinds in sorted(per_address.items()):
            print(f"  {address:45s} {dict(sorted(kinds.items()))}")
        total = sum(sum(k.values()) for k in per_address.values())
        print(f"mails in all: {total} to {len(per_address)} addresses")
        return 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        smtp.stop()


if __name__ == "__main__":
    sys.exit(main())
