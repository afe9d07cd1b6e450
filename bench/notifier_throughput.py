"""Mails per second through the notifier: reused SMTP connections, concurrent delivery, and
one notifier process against two.

Publishes ``--requests`` distinct NotificationRequests to a fresh prefix's
``notifications.requested.v1``, runs a Notifier in a thread of this process against a local
aiosmtpd sink, and reports the rate from the first mail the sink took to the last (the consumer
group's join is left out). Then the same with concurrency 1, for comparison.

    ESCALATE_TEST_KAFKA_PORT=59192 .venv/bin/python bench/notifier_throughput.py
    ESCALATE_TEST_KAFKA_PORT=59192 .venv/bin/python bench/notifier_throughput.py \
        --concurrency 8 1 16 --sink-process

``--processes 1 2`` runs the notifier as that many processes of its own instead (one consumer
group; the topic gets ``--partitions`` partitions, 4 by default, so two processes take two
each; the sink in its own process), once per count, and reports mails/s for each, with the CPU
the notifiers and the sink used. The requests are published once every process holds its
partitions, so no rebalance falls in the measure, in one transaction, so they all become
visible at once, as after a burst.

    ESCALATE_TEST_KAFKA_PORT=59192 .venv/bin/python bench/notifier_throughput.py \
        --concurrency 8 --processes 1 2 --requests 2000

``--render legacy wire`` repeats every measure with the notifier building an EmailMessage that
aiosmtplib flattens at each attempt (how mails were rendered before issue 11's change: ``legacy``)
and with the mail rendered to its bytes once (``wire``, the default), interleaved, so both are
measured under the same load.

Uses the test broker (tests/services/kafka.py: started on the test port when nothing answers
there; ESCALATE_KAFKA_BOOTSTRAP_SERVERS names another). By default the sink shares this process,
and so its interpreter lock, with the notifier; ``--sink-process`` runs it in a process of its
own, as a real relay would be. Figures are for comparing settings on one machine, not absolute
capacity.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from consumers.notifier import worker as notifier_worker  # noqa: E402
from consumers.notifier.render import email_message, render_email  # noqa: E402
from consumers.notifier.retry import RetryPolicy  # noqa: E402
from consumers.notifier.sender import SmtpConfig  # noqa: E402
from consumers.notifier.worker import Notifier, NotifierConfig  # noqa: E402
from escalate.topics_admin import TopicLayout, ensure_topics  # noqa: E402
from schemas.common import Category, Severity  # noqa: E402
from schemas.ids import notification_id  # noqa: E402
from schemas.topics import NOTIFICATIONS_REQUESTED  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.test_notifier_smtp import make_request  # noqa: E402
from tests.integration.test_scale_out import group_members  # noqa: E402
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


def requests(n: int, run: str) -> list[tuple[bytes, bytes]]:
    """``n`` distinct requests (key, value), each its own incident and recipient."""
    out = []
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
        out.append((incident.encode(), req.model_dump_json().encode()))
    return out


def publish(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], *, all_at_once: bool = False
) -> None:
    """Publish the requests. ``all_at_once``: in one transaction, so the notifiers (which read
    committed records only) see them all at the same moment, as after a burst, instead of
    taking them in small batches as they arrive."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        **({"transactional_id": f"bench-{uuid.uuid4().hex}"} if all_at_once else {}),
    )
    if all_at_once:
        producer.init_transactions()
        producer.begin_transaction()
    for key, value in records:
        producer.send(topic, key=key, value=value)
    if all_at_once:
        producer.commit_transaction()
    producer.flush()
    producer.close()


RENDERERS = {"wire": render_email, "legacy": email_message}


def use_renderer(name: str) -> None:
    """``wire``: the mail rendered to bytes once (the notifier's own); ``legacy``: an
    EmailMessage, which the sender hands to aiosmtplib's send_message to flatten, as before."""
    notifier_worker.render_email = RENDERERS[name]  # type: ignore[attr-defined,assignment]


def notifier_config(port: int, prefix: str, app_id: str, concurrency: int) -> NotifierConfig:
    return NotifierConfig(
        smtp=SmtpConfig(host="127.0.0.1", port=port, timeout_s=10),
        retry=RetryPolicy(max_attempts=3, backoff_s=0.1),
        topic_prefix=prefix,
        app_id=app_id,
        concurrency=concurrency,
    )


def rate(times: list[float]) -> float:
    """Mails per second from the sink's first mail to its last."""
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def measure(
    bootstrap: str,
    n: int,
    concurrency: int,
    timeout_s: float,
    sink_process: bool = False,
    delay_ms: float = 0.0,
    renderer: str = "wire",
) -> tuple[float, int]:
    use_renderer(renderer)
    run = uuid.uuid4().hex[:8]
    prefix = f"bench-{run}."
    ensure_topics(bootstrap, prefix)
    publish(bootstrap, NOTIFICATIONS_REQUESTED.name(prefix), requests(n, run))
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
    config = notifier_config(port, prefix, f"bench-{run}", concurrency)
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
    return rate(sink.times[:n]), len(sink.peers)


# ---- the notifier as processes of its own ----


def worker_main(args: argparse.Namespace) -> None:
    """One notifier process (``--worker``): runs until its standard input closes."""
    use_renderer(args.render[0])
    config = notifier_config(args.smtp_port, args.prefix, args.app_id, args.concurrency[0])
    notifier = Notifier(config, registry=CollectorRegistry())
    stop = threading.Event()
    thread = threading.Thread(target=notifier.run, args=(args.bootstrap, stop), daemon=True)
    thread.start()
    sys.stdin.read()
    stop.set()
    thread.join(timeout=60)


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time a process has used so far (Linux /proc; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """CPU the processes used from the publishing of the requests to the last mail."""

    notifier_ms_per_mail: float  # all notifier processes together
    notifier_cores: float  # all notifier processes together, in cores (1.0: one core busy)
    sink_cores: float

    def __str__(self) -> str:
        return (
            f"notifier CPU {self.notifier_ms_per_mail:.2f} ms/mail,"
            f" notifiers {self.notifier_cores:.2f} cores, sink {self.sink_cores:.2f} cores"
        )


def measure_processes(
    bootstrap: str,
    n: int,
    processes: int,
    concurrency: int,
    partitions: int,
    timeout_s: float,
    delay_ms: float = 0.0,
    renderer: str = "wire",
) -> tuple[float, int, Usage | None]:
    """Mails/s of ``processes`` notifier processes in one group (the sink in its own process),
    and the CPU they and the sink used (Linux). CPU per mail depends far less on how busy the
    machine is than a rate does; a sink near one core busy is the limit, not the notifiers."""
    run = uuid.uuid4().hex[:8]
    prefix, app_id = f"bench-{run}.", f"bench-{run}"
    ensure_topics(bootstrap, prefix, TopicLayout(partitions=partitions))
    records = requests(n, run)
    port = free_port()
    sink = SinkProcess(port, delay_ms / 1000)
    command = [sys.executable, __file__, "--worker", "--bootstrap", bootstrap]
    command += ["--prefix", prefix, "--app-id", app_id, "--smtp-port", str(port)]
    command += ["--concurrency", str(concurrency), "--render", renderer]
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE) for _ in range(processes)]
    try:
        deadline = time.monotonic() + 120
        while group_members(bootstrap, f"{app_id}-notifier") != processes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {processes} notifier(s) did not form a stable group")
            time.sleep(0.25)
        pids = [w.pid for w in workers] + [sink.proc.pid]
        started, t0 = [cpu_seconds(pid) for pid in pids], time.monotonic()
        publish(bootstrap, NOTIFICATIONS_REQUESTED.name(prefix), records, all_at_once=True)
        deadline = time.monotonic() + timeout_s
        while len(sink.times) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        ended, wall = [cpu_seconds(pid) for pid in pids], time.monotonic() - t0
        used = [
            e - s for s, e in zip(started, ended, strict=True) if s is not None and e is not None
        ]
        usage = None
        if sink.times and len(used) == len(pids):
            usage = Usage(
                1000 * sum(used[:-1]) / len(sink.times), sum(used[:-1]) / wall, used[-1] / wall
            )
    finally:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.close()
        for worker in workers:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        sink.stop()
    return rate(sink.times[:n]), len(sink.peers), usage


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
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        help="run the notifier as this many processes of its own (one group), e.g. 1 2",
    )
    parser.add_argument("--partitions", type=int, default=4, help="with --processes")
    parser.add_argument(
        "--render",
        choices=sorted(RENDERERS),
        nargs="+",
        default=["wire"],
        help="wire: rendered to bytes once; legacy: an EmailMessage flattened per attempt",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat every measure")
    # A notifier process of --processes (internal).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--app-id", help=argparse.SUPPRESS)
    parser.add_argument("--smtp-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    bootstrap = broker_for_tests()
    for round_ in range(1, args.rounds + 1):
        for concurrency in args.concurrency:
            for renderer in args.render:
                for processes in args.processes or [0]:
                    usage: Usage | None = None
                    if processes:
                        rate_, connections, usage = measure_processes(
                            bootstrap,
                            args.requests,
                            processes,
                            concurrency,
                            args.partitions,
                            args.timeout,
                            args.relay_delay_ms,
                            renderer,
                        )
                        how = f"{processes} process{'es' if processes > 1 else ''}, "
                    else:
                        rate_, connections = measure(
                            bootstrap,
                            args.requests,
                            concurrency,
                            args.timeout,
                            args.sink_process,
                            args.relay_delay_ms,
                            renderer,
                        )
                        how = ""
                    cpu = "" if usage is None else f"; {usage}"
                    print(
                        f"round {round_} render {renderer:<6} {how}concurrency {concurrency:>2}:"
                        f" {rate_:7.1f} mails/s ({args.requests} requests,"
                        f" {connections} SMTP connections{cpu})",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
