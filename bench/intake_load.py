"""Accepted reports per second at the intake, and the 202's latency, under concurrent clients.

Starts `escalate run intake` against a broker (ESCALATE_KAFKA_BOOTSTRAP_SERVERS, or the local
test broker), then posts distinct reports from `--connections` concurrent HTTP clients and
prints accepted/s and the 202 latency percentiles. Every 202 still means the broker acknowledged
the report (acks=all).

    .venv/bin/python bench/intake_load.py --workers 1 2 --client wrk --seconds 15

`--client wrk` (Debian's `wrk`, installed when missing) costs the shared CPU far less than the
Python client (`--client httpx`, `--reports`), so more of the machine measures the intake.
`--workers` runs one intake per value in turn, in one run, for a side-by-side comparison.

A benchmark, not a test: compare settings within one run on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
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

from bench_kit import free_port, tree_cpu_seconds  # noqa: E402

from escalate.topics_admin import ensure_topics  # noqa: E402
from tests.services.kafka import broker_for_tests  # noqa: E402

KEY = "bench-key"


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


WRK_SCRIPT = r"""
-- Each wrk thread numbers its own requests, so every body (and school) differs.
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local n = 0
function request()
  n = n + 1
  local i = tid * 10000000 + n
  local body = string.format(
    '{"channel":"app","reporter_role":"teacher","school_code":"HN-LOAD-%04d",' ..
    '"description":"Có người lạ vào phòng học trực tuyến số %d bật nhạc ồn ào."}', i % 500, i)
  return wrk.format("POST", "/v1/reports",
    {["Content-Type"] = "application/json", ["X-API-Key"] = "KEY"}, body)
end
function done(summary, latency, requests)
  io.write(string.format(
    "RESULT %d %d %d %d %.0f %.0f %.0f\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (Debian package)", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "wrk"], check=True)
    return shutil.which("wrk") or "wrk"


def load_wrk(base: str, seconds: int, connections: int, workdir: Path) -> dict[str, float]:
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT.replace("KEY", KEY), "utf-8")
    threads = min(2, connections)
    command = [ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s"]
    out = subprocess.run(
        [*command, "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    requests, duration_us, bad_status, socket_errors, p50, p99, worst = map(float, line.split()[1:])
    return {
        "accepted": requests - bad_status - socket_errors,
        "refused": bad_status + socket_errors,
        "seconds": duration_us / 1e6,
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "max_ms": worst / 1000,
    }


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            print(log.read_text("utf-8", "replace"), file=sys.stderr)
            return False
        time.sleep(0.3)


def measure(args: argparse.Namespace, bootstrap: str, workers: int) -> dict[str, float] | None:
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
        "ESCALATE_INTAKE_WORKERS": str(workers),
        "ESCALATE_VAR_DIR": str(workdir / "var"),
        "PYTHONPATH": str(REPO),
    }
    log_path = workdir / "intake.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "escalate.cli", "run", "intake"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(base, proc, log_path):
            return None
        # Warm every worker's producer and connections (the kernel spreads connections).
        asyncio.run(load(base, 50 * workers, 4 * workers))
        cpu_before = tree_cpu_seconds(proc.pid)
        if args.client == "wrk":
            result = load_wrk(base, args.seconds, args.connections, workdir)
            result["cpu_ms_per_report"] = (
                (tree_cpu_seconds(proc.pid) - cpu_before) * 1000 / max(1.0, result["accepted"])
            )
            return result
        took, latencies, refused = asyncio.run(load(base, args.reports, args.connections))
        cpu = tree_cpu_seconds(proc.pid) - cpu_before
        ordered = sorted(latencies) or [0.0]
        return {
            "cpu_ms_per_report": cpu * 1000 / max(1, len(latencies)),
            "accepted": len(latencies),
            "refused": refused,
            "seconds": took,
            "p50_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
            "max_ms": ordered[-1] * 1000,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=("wrk", "httpx"), default="wrk")
    parser.add_argument("--reports", type=int, default=2000, help="httpx: reports to post")
    parser.add_argument("--seconds", type=int, default=15, help="wrk: how long to post")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    bootstrap = os.environ.get("ESCALATE_KAFKA_BOOTSTRAP_SERVERS") or broker_for_tests()
    failed = False
    print(
        f"| intake workers ({args.client}, {args.connections} connections) | accepted/s "
        "| 202 p50 | 202 p99 | intake CPU per report | refused |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for workers in args.workers:
        result = measure(args, bootstrap, workers)
        if result is None:
            return 1
        failed |= result["refused"] > 0
        print(
            f"| {workers} | {result['accepted'] / result['seconds']:.0f} | "
            f"{result['p50_ms']:.1f} ms | {result['p99_ms']:.1f} ms | "
            f"{result['cpu_ms_per_report']:.2f} ms | {result['refused']:.0f} |",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
