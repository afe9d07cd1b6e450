"""Mails per second through one notifier: reused SMTP connections and concurrent delivery.

Publishes ``--requests`` distinct NotificationRequests to a fresh prefix's
``notifications.requested.v1``, runs a Notifier in a thread of this process against a local
aiosmtpd sink, and reports the rate from the first mail the sink took to the last (the consumer
group's join is left out). Then the same with concurrency 1, for comparison.

    ESCALATE_TEST_KAFKA_PORT=59192 .venv/bin/python bench/notifier_throughput.py
    ESCALATE_TEST_KAFKA_PORT=59192 .venv/bin/python bench/notifier_throughput.py \
        --concurrency 8 1 16 --sink-process

Uses the test broker (tests/services/kafka.py: started on the test port when nothing answers
there). By default the sink shares this process, and so its interpreter lock, with the
notifier; ``--sink-process`` runs it in a process of its own, as a real relay would be. Figures
are for comparing settings on one machine, not absolute capacity.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from consumers.notifier.retry import RetryPolicy  # noqa: E402
from consumers.notifier.sender import SmtpConfig  # noqa: E402
from consumers.notifier.worker import Notifier, NotifierConfig  # noqa: E402
from escalate.topics_admin import ensure_topics  # noqa: E402
from schemas.common import Category, Severity  # noqa: E402
from schemas.ids import notification_id  # noqa: E402
from schemas.topics import NOTIFICATIONS_REQUESTED  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.test_notifier_smtp import make_request  # noqa: E402
from tests.services.kafka import broker_for_tests  # noqa: E402


class CountingSink:
    """Takes every message and notes when; parses nothing, to stay out of the way."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.peers: set[Any] = set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.peers.add(session.peer)
        self.times.append(time.monotonic())
        return "250 OK"


# A sink of its own process: prints the monotonic time (system-wide on Linux) of each message.
SINK_PROCESS = """
import sys, time, asyncio
from aiosmtpd.controller import Controller
class H:
    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(float(sys.argv[2]))
        print(time.monotonic(), session.peer[1], flush=True)
        return "250 OK"
c = Controller(H(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"""


class SinkProcess:
    def __init__(self, port: int, delay_s: float) -> None:
        self.times: list[float] = []
        self.peers: set[Any] = set()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SINK_PROCESS, str(port), str(delay_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            at, peer = line.split()
            self.peers.add(peer)
            self.times.append(float(at))

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def publish(bootstrap: str, topic: str, n: int, run: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for i in range(n):
        incident = f"inc-{run}-{i}"
        email = f"r{i}@bd.example"
        req = make_request(
            incident_id=incident,
            email=email,
            notification_id=notification_id(incident, email, 0),
            severity=Severity.high,
            category=Category.cyberbullying,
        )
        producer.send(topic, key=incident.encode(), value=req.model_dump_json().encode())
    producer.flush()
    producer.close()


def measure(
    bootstrap: str,
    n: int,
    concurrency: int,
    timeout_s: float,
    sink_process: bool = False,
    delay_ms: float = 0.0,
) -> tuple[float, int]:
    run = uuid.uuid4().hex[:8]
    prefix = f"bench-{run}."
    ensure_topics(bootstrap, prefix)
    publish(bootstrap, NOTIFICATIONS_REQUESTED.name(prefix), n, run)
    port = free_port()
    sink: CountingSink | SinkProcess
    if sink_process or delay_ms:
        sink = SinkProcess(port, delay_ms / 1000)
        stop_sink = sink.stop
    else:
        sink = CountingSink()
        controller = Controller(sink, hostname="127.0.0.1", port=port)
        controller.start()
        stop_sink = controller.stop
    config = NotifierConfig(
        smtp=SmtpConfig(host="127.0.0.1", port=port, timeout_s=10),
        retry=RetryPolicy(max_attempts=3, backoff_s=0.1),
        topic_prefix=prefix,
        app_id=f"bench-{run}",
        concurrency=concurrency,
    )
    notifier = Notifier(config, registry=CollectorRegistry())
    stop = threading.Event()
    thread = threading.Thread(target=notifier.run, args=(bootstrap, stop), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while len(sink.times) < n and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=60)
        stop_sink()
    got = len(sink.times)
    if got < 2:
        return 0.0, len(sink.peers)
    return (got - 1) / (sink.times[got - 1] - sink.times[0]), len(sink.peers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--sink-process", action="store_true", help="run the sink apart")
    parser.add_argument(
        "--relay-delay-ms",
        type=float,
        default=0.0,
        help="the separate sink answers DATA this late, like a relay that scans mail",
    )
    args = parser.parse_args()
    bootstrap = broker_for_tests()
    for concurrency in args.concurrency:
        rate, connections = measure(
            bootstrap,
            args.requests,
            concurrency,
            args.timeout,
            args.sink_process,
            args.relay_delay_ms,
        )
        print(
            f"concurrency {concurrency:>2}: {rate:7.1f} mails/s"
            f" ({args.requests} requests, {connections} SMTP connections)",
            flush=True,
        )


if __name__ == "__main__":
    main()
