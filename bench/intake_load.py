"""Accepted reports per second at the intake, and the 202's latency, under concurrent clients.

Starts `escalate run intake` against a broker (ESCALATE_KAFKA_BOOTSTRAP_SERVERS, or the local
test broker), then posts `--reports` reports from `--connections` concurrent HTTP clients and
prints accepted/s and the 202 latency percentiles. Every 202 still means the broker acknowledged
the report (acks=all).

    .venv/bin/python bench/intake_load.py --reports 2000 --connections 16

A benchmark, not a test: compare settings within one run on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from escalate.topics_admin import ensure_topics  # noqa: E402
from tests.services.kafka import broker_for_tests  # noqa: E402

KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def load(base: str, reports: int, connections: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    refused = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(reports):
        queue.put_nowait(i)

    async def client() -> None:
        nonlocal refused
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {
                    "channel": "app",
                    "reporter_role": "teacher",
                    "school_code": f"HN-LOAD-{i % 500:04d}",
                    "description": f"Có người lạ vào phòng học trực tuyến số {i} bật nhạc ồn ào.",
                }
                started = time.monotonic()
                resp = await http.post("/v1/reports", json=body, headers={"X-API-Key": KEY})
                if resp.status_code == 202:
                    latencies.append(time.monotonic() - started)
                else:
                    refused += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(connections)))
    return time.monotonic() - started, latencies, refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    bootstrap = os.environ.get("ESCALATE_KAFKA_BOOTSTRAP_SERVERS") or broker_for_tests()
    run_id = f"load{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, f"{run_id}.")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="escalate-load-"))
    env = {
        **os.environ,
        "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ESCALATE_TOPIC_PREFIX": f"{run_id}.",
        "ESCALATE_APP_ID": run_id,
        "ESCALATE_HTTP_PORT": str(port),
        "ESCALATE_INTAKE_API_KEYS": f"bench={KEY}",
        "ESCALATE_VAR_DIR": str(workdir / "var"),
        "PYTHONPATH": str(REPO),
    }
    with (workdir / "intake.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "escalate.cli", "run", "intake"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                print((workdir / "intake.log").read_text("utf-8", "replace"), file=sys.stderr)
                return 1
            time.sleep(0.3)
        asyncio.run(load(base, 50, 4))  # warm the producer and the connections
        took, latencies, refused = asyncio.run(load(base, args.reports, args.connections))
        ordered = sorted(latencies)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0
        print(
            f"{len(latencies)} accepted, {refused} refused in {took:.1f} s: "
            f"{len(latencies) / took:.0f} accepted/s at {args.connections} connections; "
            f"202 p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
        )
        return 0 if refused == 0 else 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
