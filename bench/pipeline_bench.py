"""The pipeline benchmark of issue 11: the pipeline beside Alertmanager and raw kafka-python, on
the same broker and into the same kind of SMTP sink, in one run.

    make bench-pipeline                        # 500-report burst, steady 50/s for 30 s, 20k raw
    .venv/bin/python bench/pipeline_bench.py --rates 10 50 100 200    # cost as offered load grows
    .venv/bin/python bench/pipeline_bench.py --burst 40 --steady-rate 5 --steady-seconds 5 \\
        --raw 2000                                                    # a smoke run, about a minute

One peer after the other, so each has the machine to itself:

1. raw kafka-python: ``--raw`` messages the size of an accepted report produced with acks=all
   (msg/s until the last is acknowledged), then consumed from the start (msg/s).
2. Alertmanager (Debian's ``prometheus-alertmanager``, installed with apt-get when missing): one
   receiver mailing the sink, grouped by a label of its own per alert so each alert is one mail,
   group_wait 0s. One alert per POST to /api/v2/alerts, as one report per request.
3. The pipeline (``escalate up`` on the broker, as bench/pipeline_latency.py starts it).

Each of 2 and 3 gets a burst of ``--burst`` requests from ``--concurrency`` clients with
``--critical-share`` critical ones spread through it, then an open-loop steady rate (each
``--rates`` value, default ``--steady-rate``, for ``--steady-seconds``). Measured: mails/s and
requests/s end to end, accepted (202/200) → first mail percentiles for all and for critical ones,
whether a backlog grew at the steady rate, the intake's own rate and latency, and the CPU seconds
of every process involved (components of ``escalate up``, the broker when it is a local one,
Alertmanager, this process's load generator and sink).

Every report names a school of its own (codes outside the directory): reports of one school within
the grouping window would rightly become one incident. Before each burst a few warm-up requests go
through and are left out, so the burst measures a running system rather than its first records.

Broker: ``--bootstrap``, else ESCALATE_KAFKA_BOOTSTRAP_SERVERS, else the local broker on
ESCALATE_KAFKA_PORT (started, and stopped again at the end, when none answers there).

Writes ``var/bench/pipeline-<time>.json`` (``--out``) and the markdown tables beside it (``.md``),
and prints the tables. Exits 1 when a report or an alert never got its mail; the logs of
``escalate up`` and Alertmanager are then kept (always with ``--keep-workdir``) and their place
printed, and the JSON names the incidents that were never mailed.

A benchmark, not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from bench_kit import (
    MEASURING,
    SMTP_SINK,
    CpuMeter,
    MailRecord,
    Post,
    Sent,
    SmtpSink,
    accepted_in_order,
    burst,
    children_of,
    cmdline,
    free_port,
    group_members,
    local_broker_pid,
    percentile,
    rate,
    spread,
    steady,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from escalate import kafka_local  # noqa: E402
from escalate.settings import Settings  # noqa: E402

API_KEY = "bench-key"
AM_PACKAGE = "prometheus-alertmanager"
WARMUP = 3
# A steady run "kept up" when the latency of its last tenth is at most this much above that of
# its first tenth: a queue that keeps up has flat latency, one that does not grows all along.
BACKLOG_GROWTH_S = 0.5

# Descriptions the default policy classifies as medium or high (checked with `escalate classify`),
# and ones it classifies as critical (sextortion, grooming, self-harm, immediate danger ticked).
ORDINARY = [
    "Có người lạ vào phòng học trực tuyến bật nhạc ồn ào phá lớp.",
    "Mật khẩu và link Zoom của lớp bị đăng lên một nhóm Facebook.",
    "cac ban trong lop goi em la do ngu trong nhom chat moi ngay",
    "Em bị bạn cùng lớp lấy ảnh đại diện ghép vào ảnh con khỉ rồi gửi vào nhóm lớp, cả lớp cười "
    "nhạo em.",
    "Mã phòng và mật khẩu lớp học Zoom 7A2 bị lộ trên một trang web chia sẻ link học.",
    "Đang học online môn Toán thì có người lạ vào phòng Zoom phát nhạc ồn ào và viết bậy lên màn "
    "hình.",
]
CRITICAL = [
    ("Có người nhắn tin dọa sẽ tung ảnh nóng của con tôi nếu không đưa 10 triệu.", False),
    ("Một người lạ nhắn tin đòi con tôi gửi ảnh riêng tư và hẹn gặp riêng.", False),
    ("A student wrote in the chat that he is going to kill himself tonight.", False),
    ("Con tôi đang bị người lạ đe dọa qua điện thoại, cần hỗ trợ ngay.", True),
]


STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def report_body(i: int, critical: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "app",
        "reporter_role": "parent" if critical else "teacher",
        "school_code": f"HN-BENCH-{i:06d}",
    }
    if critical:
        # Critical ones sit at evenly spaced indices: i % 4 would pick the same text each time.
        body["description"], body["immediate_danger"] = random.Random(i).choice(CRITICAL)
    else:
        body["description"] = ORDINARY[i % len(ORDINARY)]
    return body


def critical_positions(count: int, share: float) -> set[int]:
    """Positions within a phase that carry a critical report: evenly spread, none at the edges
    (share 0.05 → positions 10, 30, 50, …)."""
    if share <= 0:
        return set()
    step = max(1, round(1 / share))
    return {k for k in range(count) if k % step == step // 2}


# --- 1. raw kafka-python ---------------------------------------------------------------------


def bench_raw_kafka(bootstrap: str, topic: str, count: int, partitions: int) -> dict[str, Any]:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    # The size of an accepted report on Kafka (ReportSubmitted): envelope + the report.
    messages = [
        (
            f"inc-{i:08d}".encode(),
            json.dumps(
                {
                    "schema_version": 1,
                    "report_id": uuid.uuid4().hex,
                    "tracking_code": f"BENCH-{i:06d}",
                    "received_at": datetime.now(UTC).isoformat(),
                    "intake_client": "bench",
                    "report": report_body(i, False),
                    "follow_up_of": None,
                },
                ensure_ascii=False,
            ).encode(),
        )
        for i in range(count)
    ]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-raw")
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        producer.partitions_for(topic)  # metadata before the clock starts
        started = time.monotonic()
        futures = [producer.send(topic, key=k, value=v) for k, v in messages]
        producer.flush()
        produce_s = time.monotonic() - started
        failed = sum(1 for f in futures if f.failed())
        producer.close()

        # assign(), not subscribe(): a group join is setup, not throughput.
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
        )
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        consumed = 0
        started = time.monotonic()
        while consumed < count - failed and time.monotonic() - started < 120:
            consumed += sum(len(batch) for batch in consumer.poll(timeout_ms=500).values())
        consume_s = time.monotonic() - started
        consumer.close()
        admin.delete_topics([topic])
    finally:
        admin.close()
    return {
        "messages": count,
        "message_bytes_avg": round(sum(len(v) for _, v in messages) / max(1, count)),
        "partitions": partitions,
        "produce": {"acks": "all", "failed": failed, "seconds": produce_s},
        "produce_msg_per_s": rate(count - failed, produce_s),
        "consume": {"consumed": consumed, "seconds": consume_s},
        "consume_msg_per_s": rate(consumed, consume_s),
    }


# --- 2. Alertmanager -------------------------------------------------------------------------


def alertmanager_binary() -> str:
    """Alertmanager on PATH (Debian names it prometheus-alertmanager); installed when missing."""

    def find() -> str | None:
        return shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")

    found = find()
    if found:
        return found
    if os.geteuid() == 0:
        sudo: list[str] = []
    elif shutil.which("sudo"):
        sudo = ["sudo", "-n"]  # never prompt: a benchmark may run without a terminal
    else:
        raise SystemExit(
            "Alertmanager is not installed, and installing it needs root: run "
            "`apt-get install prometheus-alertmanager` as root (tools/install-system-packages)"
        )
    say("Alertmanager is missing: apt-get install prometheus-alertmanager")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, stdin=subprocess.DEVNULL)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", AM_PACKAGE],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    found = find()
    if not found:
        raise SystemExit(
            "could not install prometheus-alertmanager; install it as root and run again"
        )
    return found


def alertmanager_config(smtp_port: int) -> str:
    # group_by a label each alert has alone: every alert is its own group and its own mail, as
    # every report opens its own incident. Long group and repeat intervals: nothing is resent.
    return f"""\
global:
  smtp_smarthost: 127.0.0.1:{smtp_port}
  smtp_from: alertmanager@bench.invalid
  smtp_hello: localhost
  smtp_require_tls: false
  resolve_timeout: 1h
route:
  receiver: sink
  group_by: [bench_id]
  group_wait: 0s
  group_interval: 1h
  repeat_interval: 24h
receivers:
  - name: sink
    email_configs:
      - to: desk@bench.invalid
        send_resolved: false
        headers:
          X-Bench-Alert: '{{{{ .CommonLabels.bench_id }}}}'
"""


@contextlib.contextmanager
def alertmanager(binary: str, workdir: Path, smtp_port: int) -> Iterator[tuple[str, int]]:
    """A running Alertmanager on a free port: yields (base URL, pid); stopped on exit."""
    config = workdir / "alertmanager.yml"
    config.write_text(alertmanager_config(smtp_port))
    port = free_port()
    log_path = workdir / "alertmanager.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={workdir / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # one instance: no gossip port
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: _http_ok(f"{base}/-/ready"), proc, 60, "Alertmanager to be ready", log_path
        )
        yield base, proc.pid
    finally:
        stop_process(proc)


def alertmanager_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    words = (out.stdout + out.stderr).split()
    return words[words.index("version") + 1] if "version" in words else "unknown"


def alert_post(critical: set[int]) -> Post:
    async def post(http: httpx.AsyncClient, i: int) -> str | None:
        key = f"bench-{i:06d}"
        body = report_body(i, i in critical)
        alert = {
            "labels": {
                "alertname": "BenchReport",
                "bench_id": key,
                "severity": "critical" if i in critical else "warning",
                "school_code": body["school_code"],
            },
            "annotations": {"description": body["description"]},
        }
        resp = await http.post("/api/v2/alerts", json=[alert])
        return key if resp.status_code == 200 else None

    return post


# --- 3. the pipeline -------------------------------------------------------------------------


@contextlib.contextmanager
def pipeline(
    bootstrap: str, run_id: str, workdir: Path, smtp_port: int, ready_s: float
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`escalate up` on the broker, mailing the sink: yields (base URL, the `up` process)."""
    http_port = free_port()
    env = {
        **os.environ,
        "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ESCALATE_TOPIC_PREFIX": f"{run_id}.",
        "ESCALATE_APP_ID": run_id,
        "ESCALATE_DATABASE_URL": f"sqlite:///{workdir}/audit.db",
        "ESCALATE_SMTP_HOST": "127.0.0.1",
        "ESCALATE_SMTP_PORT": str(smtp_port),
        "ESCALATE_HTTP_PORT": str(http_port),
        "ESCALATE_INTAKE_API_KEYS": f"bench={API_KEY}",
        "ESCALATE_VAR_DIR": str(workdir / "var"),
        "ESCALATE_METRICS_PORT": "0",
        "PYTHONPATH": str(REPO),
    }
    log_path = workdir / "up.log"
    with log_path.open("wb") as log:
        # A session of its own, so the whole tree (up and its components) can be ended at once
        # should `up` itself not stop them.
        proc = subprocess.Popen(
            [sys.executable, "-m", "escalate.cli", "up"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: "ready. Web form" in log_path.read_text("utf-8", "replace"),
            proc,
            ready_s,
            "`escalate up` to be ready",
            log_path,
        )
        yield f"http://127.0.0.1:{http_port}", proc
    finally:
        stop_process(proc, signal.SIGINT, grace_s=60)


def components_of(up: subprocess.Popen[bytes]) -> dict[str, int]:
    """pids of `escalate up` and of its components (`escalate.cli run NAME`)."""
    found = {"escalate up": up.pid}
    for pid in children_of(up.pid):
        args = cmdline(pid)
        if "run" in args:
            found[args[-1]] = pid
    return found


def report_post(critical: set[int]) -> Post:
    async def post(http: httpx.AsyncClient, i: int) -> str | None:
        body = report_body(i, i in critical)
        resp = await http.post("/v1/reports", json=body, headers={"X-API-Key": API_KEY})
        if resp.status_code != 202:
            return None
        return f"inc-{resp.json()['report_id']}"

    return post


# --- phases ----------------------------------------------------------------------------------


class Runner:
    """Sends the phases of one peer and measures them: the same code for both peers.

    ``critical`` is the set the peer's post function reads to know which requests to make
    critical; the runner adds to it as it hands out indices.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        post: Post,
        critical: set[int],
        sink: MailRecord,
        meter: CpuMeter,
        args: argparse.Namespace,
        backlog: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.name = name
        self.backlog = backlog
        self.base_url = base_url
        self.post = post
        self.critical = critical
        self.sink = sink
        self.meter = meter
        self.args = args
        self.next_index = 0  # across phases, so every request names a school of its own

    def _indices(self, count: int) -> tuple[list[int], set[int]]:
        indices = list(range(self.next_index, self.next_index + count))
        self.next_index += count
        critical = {indices[k] for k in critical_positions(count, self.args.critical_share)}
        self.critical.update(critical)
        return indices, critical

    def warm_up(self) -> dict[str, Any]:
        say(f"{self.name}: warm-up, {WARMUP} requests one after the other")
        indices, critical = self._indices(WARMUP)
        critical.add(indices[-1])  # through the urgent path too
        self.critical.update(critical)
        sent = asyncio.run(burst(self.post, indices, critical, 1, self.base_url))
        keys = [s.key for s in sent if s.key]
        self.sink.wait_for(keys, stall_s=self.args.stall_seconds, cap_s=self.args.stall_seconds)
        self.sink.settle()
        return {"sent": len(sent), "mailed": self.sink.mailed(keys)}

    def idle(self) -> dict[str, Any]:
        """CPU used with nothing to do: the floor under every other figure."""
        seconds = self.args.idle_seconds
        say(f"{self.name}: idle for {seconds:g} s")
        before = self.meter.read()
        time.sleep(seconds)
        cpu = CpuMeter.used(before, self.meter.read())
        total = sum(v for k, v in cpu.items() if k not in MEASURING)
        return {"seconds": seconds, "cpu_s": cpu, "cpu_s_per_s": round(total / seconds, 3)}

    def burst(self) -> dict[str, Any]:
        count, concurrency = self.args.burst, self.args.concurrency
        say(f"{self.name}: burst of {count} at {concurrency} concurrent clients")
        indices, critical = self._indices(count)
        return self._measure(
            lambda: burst(self.post, indices, critical, concurrency, self.base_url),
            {"kind": "burst", "concurrency": concurrency},
        )

    def steady(self, offered: float) -> dict[str, Any]:
        seconds = self.args.steady_seconds
        count = max(1, round(offered * seconds))
        say(f"{self.name}: steady {offered:g}/s for {seconds:g} s ({count} requests)")
        indices, critical = self._indices(count)
        result = self._measure(
            lambda: steady(
                self.post, indices, critical, offered, self.base_url, self.args.steady_connections
            ),
            {"kind": "steady", "offered_per_s": offered, "seconds": seconds},
        )
        return result

    def _measure(self, send: Callable[[], Any], head: dict[str, Any]) -> dict[str, Any]:
        cpu_before = self.meter.read()
        started = time.monotonic()
        sent: list[Sent] = asyncio.run(send())
        # Where the requests wait at the moment the last was sent: the backlog at its largest.
        backlog = self.backlog() if self.backlog else None
        keys = [s.key for s in sent if s.key]
        self.sink.wait_for(keys, stall_s=self.args.stall_seconds, cap_s=self.args.drain_cap)
        # CPU until the last mail of these requests (more recipients, reviews), not just the
        # first: all of it is what handling them cost.
        self.sink.settle()
        cpu = CpuMeter.used(cpu_before, self.meter.read())
        with self.sink.lock:
            first_seen = dict(self.sink.first_seen)
            severity = dict(self.sink.first_severity)
            mail_times = [t for t in self.sink.mail_times if t >= started]
        summary = summarize(sent, first_seen, severity, mail_times, cpu, head.get("offered_per_s"))
        # Others may share the machine: the load at the end of each phase says how much.
        return {
            **head,
            **summary,
            "consumer_lag_when_sending_ended": backlog,
            "loadavg_1m": os.getloadavg()[0],
        }


def summarize(
    sent: list[Sent],
    first_seen: dict[str, float],
    severity: dict[str, str],
    mail_times: list[float],
    cpu: dict[str, float],
    offered: float | None = None,
) -> dict[str, Any]:
    """The figures of one phase. 'sent' is when a request left (burst) or fell due (steady
    rate), so sent → first mail includes any wait for the intake; accepted → first mail starts
    at the 202 (200 for Alertmanager)."""
    started = min((s.sent_at for s in sent), default=0.0)  # the first request's departure
    accepted = accepted_in_order(sent)
    mailed = [a for a in accepted if a.key in first_seen]
    latency = [first_seen[a.key] - a.accepted_at for a in mailed]
    from_sent = [first_seen[a.key] - a.sent_at for a in mailed]  # in sending order
    firsts = sorted(first_seen[a.key] for a in mailed)
    critical = [a for a in accepted if a.critical]
    critical_mailed = [a for a in critical if a.key in first_seen]
    last_accepted = max((a.accepted_at for a in accepted), default=None)
    posting_s = (last_accepted - started) if last_accepted else None
    first_span = (firsts[-1] - firsts[0]) if len(firsts) > 1 else None
    mail_span = (mail_times[-1] - mail_times[0]) if len(mail_times) > 1 else None
    end_to_end_s = (firsts[-1] - started) if firsts else None
    # Backlog: sent → first mail of the first tenth of the requests against the last tenth's,
    # wherever the wait was (intake or later).
    tenth = max(1, len(from_sent) // 10)
    first_tenth = percentile(from_sent[:tenth], 0.5)
    last_tenth = percentile(from_sent[-tenth:], 0.5)
    accepted_per_s = rate(len(accepted), posting_s)
    # An intake that takes fewer than offered leaves the backlog with the clients.
    fell_behind = bool(offered and (accepted_per_s or 0) < 0.9 * offered)
    cpu_total = sum(v for k, v in cpu.items() if k not in MEASURING)
    return {
        "sent": len(sent),
        "accepted": len(accepted),
        "refused": len(sent) - len(accepted),
        "mailed": len(mailed),
        "missing": len(accepted) - len(mailed),
        # Incident or alert ids (never report text), to look up in the logs kept for them.
        "missing_ids": [a.key for a in accepted if a.key not in first_seen][:20],
        "posting_s": posting_s,
        "accepted_per_s": accepted_per_s,
        "accept_latency_s": spread([a.accepted_at - a.sent_at for a in accepted]),
        "first_mail_span_s": first_span,
        "mails_per_s": rate(len(firsts), first_span),
        "all_mails": len(mail_times),
        "all_mails_per_s": rate(len(mail_times), mail_span),
        "end_to_end_s": end_to_end_s,
        "requests_per_s_end_to_end": rate(len(mailed), end_to_end_s),
        "drain_s": (firsts[-1] - last_accepted) if firsts and last_accepted else None,
        "latency_s": spread(latency),
        "sent_to_first_mail_s": spread(from_sent),
        "first_tenth_p50_s": first_tenth,
        "last_tenth_p50_s": last_tenth,
        "intake_fell_behind": fell_behind,
        "backlog_grew": fell_behind
        or backlog_grew(first_tenth, last_tenth, len(accepted) - len(mailed)),
        "critical": {
            "sent": len(critical),
            "mailed": len(critical_mailed),
            # The pipeline's own classification, from the first mail's X-Escalate-Severity
            # (Alertmanager's mails carry none: 0 there).
            "mailed_as_critical": sum(
                1 for a in critical_mailed if severity.get(a.key) == "critical"
            ),
            "latency_s": spread([first_seen[a.key] - a.accepted_at for a in critical_mailed]),
        },
        "cpu_s": cpu,
        "cpu_s_total": round(cpu_total, 2),
        "cpu_s_per_request": round(cpu_total / len(accepted), 5) if accepted else None,
    }


def backlog_grew(first: float | None, last: float | None, missing: int) -> bool:
    if missing:
        return True
    if first is None or last is None:
        return False
    return last - first > BACKLOG_GROWTH_S


def run_peer(runner: Runner, rates: list[float], stop_early: Callable[[], bool]) -> dict[str, Any]:
    result: dict[str, Any] = {"warmup": runner.warm_up(), "idle": runner.idle()}
    result["burst"] = runner.burst()
    result["steady"] = []
    for offered in rates:
        if stop_early():
            break
        result["steady"].append(runner.steady(offered))
    return result


# --- process helpers -------------------------------------------------------------------------


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(
    check: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    timeout_s: float,
    what: str,
    log_path: Path,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text("utf-8", "replace").splitlines()[-40:]
            raise RuntimeError(f"timed out waiting for {what}; log tail:\n" + "\n".join(tail))
        time.sleep(0.3)


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace_s: float = 30
) -> None:
    """Ask, then insist. The process leads a session of its own: whatever of its group is still
    there afterwards (a component `up` failed to stop) is killed by pid."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in group_members(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def resolve_broker(explicit: str | None) -> tuple[str, Callable[[], None]]:
    """The bootstrap address, and what to call at the end (stop a broker started here)."""
    given = explicit or os.environ.get("ESCALATE_KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if given:
        if not kafka_local.broker_answers(given, timeout_s=10):
            raise SystemExit(f"no Kafka broker answers at {given}")
        return given, lambda: None
    settings = Settings()
    address = kafka_local.bootstrap_address(settings)
    if kafka_local.broker_answers(address):
        return address, lambda: None
    say(f"starting the local Kafka broker on {address}")
    bootstrap = kafka_local.start(settings, progress=say)

    def stop() -> None:
        say(f"stopping the broker on {bootstrap}")
        kafka_local.stop(settings)

    return bootstrap, stop


def drop_kafka_leftovers(bootstrap: str, run_id: str) -> None:
    """Topics and consumer groups of this run (names start with the run id): a shared broker
    should not keep them. Best effort: a failure here changes no figure."""
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-cleanup")
    except Exception:
        return
    try:
        topics = [t for t in admin.list_topics() if t.startswith(run_id)]
        if topics:
            admin.delete_topics(topics)
        groups = [g["group_id"] for g in admin.list_groups() if g["group_id"].startswith(run_id)]
        if groups:
            admin.delete_groups(groups)
    except Exception as exc:  # cleanup must not hide the result
        say(f"could not remove this run's topics or groups: {type(exc).__name__}")
    finally:
        admin.close()


def consumer_lag(bootstrap: str, run_id: str) -> dict[str, int]:
    """Messages each consumer group of this run has yet to read (end offset − committed,
    summed over partitions), by stage name: where a backlog waits. Transaction markers take an
    offset each, so a caught-up stage reading transactional topics shows a few."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-lag")
    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, client_id="bench-lag")
    try:
        groups = [g["group_id"] for g in admin.list_groups() if g["group_id"].startswith(run_id)]
        lag: dict[str, int] = {}
        for group, committed in admin.list_group_offsets(groups).items():
            # Every partition of the topics the group reads: one it has committed nothing on
            # yet waits from offset 0 (the run's topics are new, groups start at the earliest).
            parts = [
                TopicPartition(topic, p)
                for topic in {tp.topic for tp in committed}
                for p in reader.partitions_for_topic(topic) or ()
            ]
            ends = reader.end_offsets(parts)
            done = {tp: max(0, meta.offset) for tp, meta in committed.items()}
            lag[group.removeprefix(f"{run_id}-")] = sum(
                max(0, ends[tp] - done.get(tp, 0)) for tp in parts
            )
        return lag
    finally:
        reader.close()
        admin.close()


def broker_port(bootstrap: str) -> int | None:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return int(port) if host in ("127.0.0.1", "localhost") and port.isdigit() else None


# --- report ----------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b to four significant digits (a pipeline/raw ratio can be 0.0001)."""
    return float(f"{a / b:.4g}") if a is not None and b else None


def compute_ratios(result: dict[str, Any]) -> dict[str, Any]:
    pipe, am, raw = result["pipeline"], result["alertmanager"], result["raw_kafka"]
    pb, ab = pipe["burst"], am["burst"]
    ratios: dict[str, Any] = {
        "burst_mails_per_s": {
            "pipeline_over_alertmanager": ratio(pb["mails_per_s"], ab["mails_per_s"]),
            "pipeline_over_raw_consume": ratio(pb["mails_per_s"], raw["consume_msg_per_s"]),
        },
        "burst_requests_per_s_end_to_end": {
            "pipeline_over_alertmanager": ratio(
                pb["requests_per_s_end_to_end"], ab["requests_per_s_end_to_end"]
            )
        },
        "burst_latency_p99": {
            "pipeline_over_alertmanager": ratio(pb["latency_s"]["p99"], ab["latency_s"]["p99"])
        },
        "burst_critical_latency_p99": {
            "pipeline_over_alertmanager": ratio(
                pb["critical"]["latency_s"]["p99"], ab["critical"]["latency_s"]["p99"]
            )
        },
        "burst_accepted_per_s": {
            "pipeline_over_alertmanager": ratio(pb["accepted_per_s"], ab["accepted_per_s"]),
            "pipeline_over_raw_produce": ratio(pb["accepted_per_s"], raw["produce_msg_per_s"]),
        },
        "burst_cpu_s_per_request": {
            "pipeline_over_alertmanager": ratio(pb["cpu_s_per_request"], ab["cpu_s_per_request"])
        },
        "steady": [],
    }
    for ps, as_ in zip(pipe["steady"], am["steady"], strict=False):
        ratios["steady"].append(
            {
                "offered_per_s": ps["offered_per_s"],
                "latency_p50_pipeline_over_alertmanager": ratio(
                    ps["latency_s"]["p50"], as_["latency_s"]["p50"]
                ),
                "latency_p99_pipeline_over_alertmanager": ratio(
                    ps["latency_s"]["p99"], as_["latency_s"]["p99"]
                ),
                "cpu_s_per_request_pipeline_over_alertmanager": ratio(
                    ps["cpu_s_per_request"], as_["cpu_s_per_request"]
                ),
            }
        )
    return ratios


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    pb, ab = result["pipeline"]["burst"], result["alertmanager"]["burst"]
    crit_p99 = pb["critical"]["latency_s"]["p99"]
    targets = [
        {
            "target": "burst: pipeline mails/s ≥ Alertmanager's",
            "met": bool(pb["mails_per_s"] and ab["mails_per_s"])
            and pb["mails_per_s"] >= ab["mails_per_s"],
        },
        {
            "target": "burst: critical accepted → first mail p99 < 1 s",
            "met": crit_p99 is not None
            and crit_p99 < 1.0
            and pb["critical"]["mailed"] == pb["critical"]["sent"],
        },
    ]
    for st in result["pipeline"]["steady"]:
        p99 = st["latency_s"]["p99"]
        targets.append(
            {
                "target": f"steady {st['offered_per_s']:g}/s: no backlog, p99 < 1 s",
                "met": not st["backlog_grew"] and p99 is not None and p99 < 1.0,
            }
        )
    return targets


def fmt_s(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def fmt_n(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    return f"{text}{unit}"


def fmt_lag(lag: dict[str, int] | None) -> str:
    """The stages with messages waiting, most first: 'processors 1,200, grouper 40'."""
    if lag is None:
        return "—"
    waiting = sorted(((n, v) for n, v in lag.items() if v > 0), key=lambda nv: -nv[1])
    return ", ".join(f"{n} {v:,}" for n, v in waiting[:4]) or "none"


def fmt_r(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def markdown(result: dict[str, Any]) -> str:
    meta, raw = result["meta"], result["raw_kafka"]
    pipe, am, ratios = result["pipeline"], result["alertmanager"], result["ratios"]
    pb, ab = pipe["burst"], am["burst"]
    lines = [
        f"## Pipeline benchmark, {meta['started_at']}",
        "",
        f"{meta['cpus']} CPUs, load average {meta['loadavg_before'][0]:.2f} before and "
        f"{meta['loadavg_after'][0]:.2f} after (others may share the machine). "
        f"{pb['sent']} distinct reports at {pb['concurrency']} concurrent clients "
        f"({pb['critical']['sent']} critical, {pb['critical']['mailed_as_critical']} of them "
        f"mailed as critical by the pipeline); Alertmanager {am['version']}, one mail per alert, "
        f"group_wait 0; raw kafka-python: {raw['messages']:,} messages of "
        f"~{raw['message_bytes_avg']} bytes, acks=all, {raw['partitions']} partitions.",
        "",
        "| figure | pipeline | Alertmanager | raw kafka-python | pipeline / Alertmanager "
        "| pipeline / raw |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| mails/s delivered in the burst (first mail each) | {fmt_n(pb['mails_per_s'])} "
        f"| {fmt_n(ab['mails_per_s'])} | consume {fmt_n(raw['consume_msg_per_s'])} msg/s "
        f"| {fmt_r(ratios['burst_mails_per_s']['pipeline_over_alertmanager'])} "
        f"| {fmt_r(ratios['burst_mails_per_s']['pipeline_over_raw_consume'])} |",
        f"| all mails/s in the burst (every recipient) | {fmt_n(pb['all_mails_per_s'])} "
        f"| {fmt_n(ab['all_mails_per_s'])} | — | — | — |",
        f"| requests/s end to end (first sent → last first mail) "
        f"| {fmt_n(pb['requests_per_s_end_to_end'])} | {fmt_n(ab['requests_per_s_end_to_end'])} "
        f"| — | {fmt_r(ratios['burst_requests_per_s_end_to_end']['pipeline_over_alertmanager'])}"
        " | — |",
        f"| accepted → first mail in the burst, p50 / p99 "
        f"| {fmt_s(pb['latency_s']['p50'])} / {fmt_s(pb['latency_s']['p99'])} "
        f"| {fmt_s(ab['latency_s']['p50'])} / {fmt_s(ab['latency_s']['p99'])} | — "
        f"| {fmt_r(ratios['burst_latency_p99']['pipeline_over_alertmanager'])} (p99) | — |",
        f"| accepted → first mail, p99, critical in the burst "
        f"| {fmt_s(pb['critical']['latency_s']['p99'])} "
        f"| {fmt_s(ab['critical']['latency_s']['p99'])} | — "
        f"| {fmt_r(ratios['burst_critical_latency_p99']['pipeline_over_alertmanager'])} | — |",
    ]
    for ps, as_, r in zip(pipe["steady"], am["steady"], ratios["steady"], strict=False):
        lines.append(
            f"| steady {ps['offered_per_s']:g}/s for {ps['seconds']:g} s: "
            "accepted → first mail p50 / p99"
            f"{' (backlog grew)' if ps['backlog_grew'] else ''} "
            f"| {fmt_s(ps['latency_s']['p50'])} / {fmt_s(ps['latency_s']['p99'])} "
            f"| {fmt_s(as_['latency_s']['p50'])} / {fmt_s(as_['latency_s']['p99'])} | — "
            f"| {fmt_r(r['latency_p50_pipeline_over_alertmanager'])} / "
            f"{fmt_r(r['latency_p99_pipeline_over_alertmanager'])} | — |"
        )
    lines += [
        f"| intake in the burst, {pb['concurrency']} connections: accepted/s, 202 (200) p99 "
        f"| {fmt_n(pb['accepted_per_s'], '/s')}, {fmt_s(pb['accept_latency_s']['p99'])} "
        f"| {fmt_n(ab['accepted_per_s'], '/s')}, {fmt_s(ab['accept_latency_s']['p99'])} "
        f"| produce {fmt_n(raw['produce_msg_per_s'])} msg/s "
        f"| {fmt_r(ratios['burst_accepted_per_s']['pipeline_over_alertmanager'])} "
        f"| {fmt_r(ratios['burst_accepted_per_s']['pipeline_over_raw_produce'])} |",
        f"| CPU seconds per request in the burst (all processes but the bench's client and sink) "
        f"| {pb['cpu_s_per_request']} | {ab['cpu_s_per_request']} | — "
        f"| {fmt_r(ratios['burst_cpu_s_per_request']['pipeline_over_alertmanager'])} | — |",
        f"| Kafka backlog by stage when the burst's last report was sent "
        f"| {fmt_lag(pb.get('consumer_lag_when_sending_ended'))} | — | — | — | — |",
        f"| CPU seconds per second, idle (nothing sent for {pipe['idle']['seconds']:g} s) "
        f"| {pipe['idle']['cpu_s_per_s']} | {am['idle']['cpu_s_per_s']} | — "
        f"| {fmt_r(ratio(pipe['idle']['cpu_s_per_s'], am['idle']['cpu_s_per_s']))} | — |",
        "",
        "Offered load, steady rates (open loop; 'backlog' when sent → first mail of the last "
        f"tenth, p50, is more than {BACKLOG_GROWTH_S:g} s above the first tenth's, the intake "
        "accepted less than 90% of the rate, or a report was never mailed):",
        "",
        "| offered/s | pipeline accepted/s | accepted → first mail p50 / p99 "
        "| sent → first mail, first → last tenth p50 "
        "| backlog | Kafka backlog by stage when sending ended | pipeline CPU s/report "
        "| busiest process (CPU s) | Alertmanager p50 / p99 | Alertmanager CPU s/alert |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ps, as_ in zip(pipe["steady"], am["steady"], strict=False):
        busiest = max(
            ((k, v) for k, v in ps["cpu_s"].items() if k not in MEASURING),
            key=lambda kv: kv[1],
            default=("—", 0.0),
        )
        lines.append(
            f"| {ps['offered_per_s']:g} | {fmt_n(ps['accepted_per_s'])} "
            f"| {fmt_s(ps['latency_s']['p50'])} / {fmt_s(ps['latency_s']['p99'])} "
            f"| {fmt_s(ps['first_tenth_p50_s'])} → {fmt_s(ps['last_tenth_p50_s'])} "
            f"| {'yes' if ps['backlog_grew'] else 'no'} "
            f"| {fmt_lag(ps.get('consumer_lag_when_sending_ended'))} | {ps['cpu_s_per_request']} "
            f"| {busiest[0]} ({busiest[1]:.1f}) "
            f"| {fmt_s(as_['latency_s']['p50'])} / {fmt_s(as_['latency_s']['p99'])} "
            f"| {as_['cpu_s_per_request']} |"
        )
    lines += [
        "",
        "CPU seconds by process (idle; the burst; then each steady rate):",
        "",
        "| process | idle | burst | "
        + " | ".join(f"{st['offered_per_s']:g}/s" for st in pipe["steady"])
        + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in pipe["steady"]) + " |",
    ]
    for label, peer in (("", pipe), ("Alertmanager: ", am)):
        phases = [peer["idle"], peer["burst"], *peer["steady"]]
        for name in peer["burst"]["cpu_s"]:
            cells = [f"{phase['cpu_s'].get(name, 0.0):.1f}" for phase in phases]
            lines.append(f"| {label}{name} | " + " | ".join(cells) + " |")
    lines += ["", "| target | met |", "| --- | --- |"]
    lines += [f"| {t['target']} | {'yes' if t['met'] else 'no'} |" for t in result["targets"]]
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: see above)")
    parser.add_argument("--burst", type=int, default=500, help="requests in the burst")
    parser.add_argument("--concurrency", type=int, default=16, help="clients in the burst")
    parser.add_argument("--critical-share", type=float, default=0.05)
    parser.add_argument("--steady-rate", type=float, default=50.0, help="requests/s")
    parser.add_argument(
        "--rates", type=float, nargs="+", help="several steady rates, one after the other"
    )
    parser.add_argument("--steady-seconds", type=float, default=30.0)
    parser.add_argument(
        "--steady-connections", type=int, default=32, help="clients sharing the steady rate"
    )
    parser.add_argument("--raw", type=int, default=20_000, help="messages for raw kafka-python")
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=60.0,
        help="give up waiting for mail after this long without a new one",
    )
    parser.add_argument(
        "--drain-cap", type=float, default=900.0, help="longest wait for one phase's mail"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=10.0, help="CPU measured with no load first"
    )
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--out", type=Path, help="JSON file (default var/bench/pipeline-<time>)")
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temporary directory with the logs of `escalate up` and Alertmanager",
    )
    return parser.parse_args(argv)


def all_mailed(result: dict[str, Any]) -> bool:
    """Both peers ran to the end, accepted every request and mailed every one."""
    if "pipeline" not in result or "alertmanager" not in result:
        return False
    phases = [result[p]["burst"] for p in ("pipeline", "alertmanager")]
    phases += result["pipeline"]["steady"] + result["alertmanager"]["steady"]
    return all(p["missing"] == 0 and p["refused"] == 0 for p in phases)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM (a test's timeout, a CI job cancelled) must unwind like Ctrl-C, through the
    # finally blocks that stop `escalate up`, Alertmanager and a broker started here.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    rates = args.rates or [args.steady_rate]
    started_at = datetime.now().astimezone()
    out = args.out or REPO / "var" / "bench" / f"pipeline-{started_at:%Y%m%d-%H%M%S}.json"
    run_id = f"pbench{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="escalate-pbench-"))
    am_binary = alertmanager_binary()  # before anything starts: it may need installing
    bootstrap, stop_broker = resolve_broker(args.bootstrap)
    port = broker_port(bootstrap)
    broker_pid = local_broker_pid(port) if port else None
    result: dict[str, Any] = {
        "meta": {
            "started_at": started_at.isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "loadavg_before": os.getloadavg(),
            "bootstrap": bootstrap,
            "broker_cpu_counted": broker_pid is not None,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "steady_rates": rates,
        }
    }
    try:
        say(f"raw kafka-python: {args.raw} messages on {bootstrap}")
        result["raw_kafka"] = bench_raw_kafka(bootstrap, f"{run_id}.raw", args.raw, 6)

        def with_broker(pids: dict[str, int]) -> dict[str, int]:
            return {**pids, "kafka broker": broker_pid} if broker_pid else pids

        am_sink = SmtpSink(b"X-Bench-Alert")
        try:
            with alertmanager(am_binary, workdir, am_sink.port) as (am_base, am_pid):
                say(f"Alertmanager {alertmanager_version(am_binary)} at {am_base}")
                am_critical: set[int] = set()
                runner = Runner(
                    "Alertmanager",
                    am_base,
                    alert_post(am_critical),
                    am_critical,
                    am_sink,
                    CpuMeter(lambda: {"alertmanager": am_pid, SMTP_SINK: am_sink.pid}),
                    args,
                )
                result["alertmanager"] = {
                    "version": alertmanager_version(am_binary),
                    **run_peer(runner, rates, lambda: False),
                }
        finally:
            am_sink.stop()

        sink = SmtpSink(b"X-Escalate-Incident")
        try:
            say("starting `escalate up`")
            with pipeline(bootstrap, run_id, workdir, sink.port, args.ready_timeout) as (
                base,
                up,
            ):
                critical: set[int] = set()
                runner = Runner(
                    "pipeline",
                    base,
                    report_post(critical),
                    critical,
                    sink,
                    CpuMeter(lambda: {**with_broker(components_of(up)), SMTP_SINK: sink.pid}),
                    args,
                    backlog=lambda: consumer_lag(bootstrap, run_id),
                )
                result["pipeline"] = run_peer(runner, rates, lambda: up.poll() is not None)
                result["pipeline"]["exited_early"] = up.poll() is not None
                say("stopping `escalate up`")
        finally:
            sink.stop()
    finally:
        say("removing this run's topics and consumer groups")
        drop_kafka_leftovers(bootstrap, run_id)
        stop_broker()
        if args.keep_workdir or not all_mailed(result):
            say(f"logs of `escalate up` and Alertmanager kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    result["meta"]["loadavg_after"] = os.getloadavg()
    result["ratios"] = compute_ratios(result)
    result["targets"] = check_targets(result)
    result["ok"] = all_mailed(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", "utf-8")
    table = markdown(result)
    out.with_suffix(".md").write_text(table, "utf-8")
    print(table)
    say(f"wrote {out} and {out.with_suffix('.md')}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
