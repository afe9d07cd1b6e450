"""What the processors' transaction size costs and buys: burst throughput and added latency.

For each `--commit-every` value (same broker, same run, fresh topics each time) it publishes
`--reports` reports to reports.submitted, starts `escalate run processors`, and measures
- the burst: reports classified per second, from the first output to the last one a
  read_committed consumer can see;
- one at a time (`--steady` reports, 0.2 s apart, after the burst): publish → visible on
  reports.classified, p50 and p99.

    .venv/bin/python bench/processors_commit.py --reports 1000 --commit-every 1 50

Uses ESCALATE_KAFKA_BOOTSTRAP_SERVERS, or starts the local test broker. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from escalate.topics_admin import ensure_topics  # noqa: E402
from producers.intake.publisher import ReportPublisher  # noqa: E402
from schemas.reports import ReportIn  # noqa: E402
from schemas.topics import REPORTS_CLASSIFIED  # noqa: E402
from tests.services.kafka import broker_for_tests  # noqa: E402

TEXTS = [
    "Có người lạ vào phòng học trực tuyến bật nhạc ồn ào phá lớp.",
    "Mật khẩu và link Zoom của lớp bị đăng lên một nhóm Facebook.",
    "Một người lạ nhắn tin đòi con tôi gửi ảnh riêng tư và hẹn gặp riêng.",
    "cac ban trong lop goi em la do ngu trong nhom chat moi ngay",
]


def report(i: int) -> ReportIn:
    return ReportIn(
        channel="app",
        reporter_role="teacher",
        school_code=f"HN-BENCH-{i:05d}",
        description=TEXTS[i % len(TEXTS)],
    )


class Watch:
    """Reads reports.classified (read_committed) and notes when each report id became visible."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import json

        while not self.stop.is_set():
            for records in self.consumer.poll(timeout_ms=100).values():
                now = time.monotonic()
                with self.lock:
                    for r in records:
                        self.seen[json.loads(r.value)["report_ids"][0]] = now

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.consumer.close()


def one_run(bootstrap: str, commit_every: int, reports: int, steady: int) -> dict[str, float]:
    run_id = f"pc{uuid.uuid4().hex[:8]}"
    prefix = f"{run_id}."
    ensure_topics(bootstrap, prefix)
    publisher = ReportPublisher(bootstrap, prefix)
    for i in range(reports):
        publisher.publish(report(i), "bench")
    watch = Watch(bootstrap, REPORTS_CLASSIFIED.name(prefix))
    workdir = Path(tempfile.mkdtemp(prefix="escalate-pc-"))
    env = {
        **os.environ,
        "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ESCALATE_TOPIC_PREFIX": prefix,
        "ESCALATE_APP_ID": run_id,
        "ESCALATE_METRICS_PORT": "0",
        "ESCALATE_PROCESSORS_COMMIT_EVERY": str(commit_every),
        "PYTHONPATH": str(REPO),
    }
    with (workdir / "processors.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "escalate.cli", "run", "processors"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 600
        first = None
        while watch.count() < reports and time.monotonic() < deadline:
            if first is None and watch.count():
                first = time.monotonic()
            time.sleep(0.05)
        with watch.lock:
            times = sorted(watch.seen.values())
        burst = (len(times) - 1) / max(1e-9, times[-1] - times[0]) if len(times) > 1 else 0.0
        sent: dict[str, float] = {}
        for i in range(reports, reports + steady):
            rid = publisher.publish(report(i), "bench").report_id
            sent[rid] = time.monotonic()
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with watch.lock:
                if all(r in watch.seen for r in sent):
                    break
            time.sleep(0.05)
        with watch.lock:
            lat = sorted(watch.seen[r] - t for r, t in sent.items() if r in watch.seen)
        return {
            "commit_every": commit_every,
            "burst_reports_per_s": burst,
            "steady_p50_ms": statistics.median(lat) * 1000 if lat else float("nan"),
            "steady_p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
            if lat
            else float("nan"),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        watch.close()
        publisher.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--steady", type=int, default=50)
    parser.add_argument("--commit-every", type=int, nargs="+", default=[1, 50])
    args = parser.parse_args()
    bootstrap = os.environ.get("ESCALATE_KAFKA_BOOTSTRAP_SERVERS") or broker_for_tests()
    for n in args.commit_every:
        r = one_run(bootstrap, n, args.reports, args.steady)
        print(
            f"commit_every={n:4d}  burst {r['burst_reports_per_s']:7.1f} reports/s   "
            f"steady publish->visible p50 {r['steady_p50_ms']:6.0f} ms  "
            f"p99 {r['steady_p99_ms']:6.0f} ms",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
