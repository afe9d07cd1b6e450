"""Pieces shared by bench/pipeline_bench.py: an SMTP sink that times first mails, HTTP load
(a closed-loop burst and an open-loop steady rate), percentiles and CPU time read from /proc.

Nothing here prints or keeps the text of a mail or a report: the sink reads only the header
that names the incident (or alert) and its severity.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import httpx

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# CpuMeter's names for the measuring processes, which are no peer's cost.
BENCH_CLIENT = "bench client"
SMTP_SINK = "smtp sink"
MEASURING = frozenset({BENCH_CLIENT, SMTP_SINK})

_SSL_CONTEXT: ssl.SSLContext | None = None


def http_client(base_url: str, timeout: float) -> httpx.AsyncClient:
    """A client sharing one SSL context: httpx would load the CA bundle for each client, a
    CPU slice per connection that the servers under test would otherwise be charged with
    (the URLs are plain http anyway)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, verify=_SSL_CONTEXT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the mail sink ---------------------------------------------------------------------------


@dataclass
class MailRecord:
    """When each key (incident or alert) got its first mail, and when every mail came.

    Times are ``time.monotonic()``: CLOCK_MONOTONIC is one clock for every process of the
    machine, so the sink's process and the load generator compare without a clock sync.
    """

    first_seen: dict[str, float] = field(default_factory=dict)
    first_severity: dict[str, str] = field(default_factory=dict)
    mail_times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, at: float, key: str, severity: str) -> None:
        with self.lock:
            self.mail_times.append(at)
            if key and key not in self.first_seen:
                self.first_seen[key] = at
                self.first_severity[key] = severity

    def mailed(self, keys: list[str]) -> int:
        with self.lock:
            return sum(1 for k in keys if k in self.first_seen)

    def last_mail_at(self) -> float:
        with self.lock:
            return self.mail_times[-1] if self.mail_times else 0.0

    def wait_for(self, keys: list[str], stall_s: float, cap_s: float) -> None:
        """Until every key has a mail, or no new one arrived for ``stall_s`` (a pipeline that
        stopped delivering), or ``cap_s`` passed. A slow but moving backlog is waited for."""
        started = last_progress = time.monotonic()
        done = self.mailed(keys)
        while done < len(keys):
            time.sleep(0.2)
            now = time.monotonic()
            count = self.mailed(keys)
            if count > done:
                done, last_progress = count, now
            if now - last_progress > stall_s or now - started > cap_s:
                return

    def settle(self, quiet_s: float = 2.0, cap_s: float = 90.0) -> None:
        """Until no mail at all arrived for ``quiet_s``: later mails of earlier incidents (more
        recipients, review requests) must not be counted in the next phase's CPU and rates."""
        deadline = time.monotonic() + cap_s
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_mail_at() >= quiet_s:
                return
            time.sleep(0.2)


class SmtpSink(MailRecord):
    """A real SMTP server (aiosmtpd) in a process of its own, feeding this MailRecord.

    Its own process, so that taking hundreds of mails a second neither waits for nor delays the
    load generator (one GIL would make each stamp the other's late). Each mail comes back over
    a pipe as (arrival time, key, severity).
    """

    def __init__(self, key_header: bytes) -> None:
        super().__init__()
        self.port = free_port()
        receiver, sender = multiprocessing.Pipe(duplex=False)
        # spawn: this process already runs threads (Kafka clients), which fork would copy.
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=serve_smtp, args=(key_header, self.port, sender), daemon=True
        )
        self.process.start()
        sender.close()
        try:
            started = receiver.poll(60) and receiver.recv() == "ready"
        except EOFError:  # the process died first; its traceback is on stderr
            started = False
        if not started:
            self.stop()
            raise RuntimeError("the SMTP sink process did not start")
        self._reader = threading.Thread(target=self._read, args=(receiver,), daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def _read(self, receiver: Connection) -> None:
        while True:
            try:
                at, key, severity = receiver.recv()
            except (EOFError, OSError):
                return
            self.record(at, key, severity)

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class _Forwarder:
    """aiosmtpd handler (in the sink's process): stamp each mail, send its key home."""

    def __init__(self, key_header: bytes, sender: Connection) -> None:
        self.wanted = key_header.lower() + b":"
        self.sender = sender

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        key = severity = ""
        for line in envelope.original_content.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            lower = line.lower()
            if lower.startswith(self.wanted):
                key = line.split(b":", 1)[1].strip().decode("ascii", "replace")
            elif lower.startswith(b"x-escalate-severity:"):
                severity = line.split(b":", 1)[1].strip().decode("ascii", "replace")
        self.sender.send((now, key, severity))
        return "250 OK"


def serve_smtp(key_header: bytes, port: int, sender: Connection) -> None:
    """The sink process: serve until terminated, or until the bench that started it is gone."""
    from aiosmtpd.controller import Controller

    controller = Controller(_Forwarder(key_header, sender), hostname="127.0.0.1", port=port)
    controller.start()
    sender.send("ready")
    parent = os.getppid()
    while os.getppid() == parent:  # a killed bench leaves nobody to report to
        time.sleep(1)
    controller.stop()


# --- load ------------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request of a load run: its key once accepted (None when refused)."""

    index: int
    critical: bool
    sent_at: float
    accepted_at: float | None = None
    key: str | None = None


class Accepted(NamedTuple):
    """A request the server accepted, with the key its mail will carry."""

    critical: bool
    sent_at: float
    accepted_at: float
    key: str


def accepted_in_order(sent: list[Sent]) -> list[Accepted]:
    """The accepted requests in the order they were sent."""
    done = [
        Accepted(s.critical, s.sent_at, s.accepted_at, s.key)
        for s in sent
        if s.key is not None and s.accepted_at is not None
    ]
    return sorted(done, key=lambda a: a.sent_at)


# ``post(client, index)`` sends request ``index`` and returns the key the sink will see, or
# None when the server refused it.
Post = Callable[[httpx.AsyncClient, int], Awaitable[str | None]]


async def burst(
    post: Post, indices: list[int], critical: set[int], concurrency: int, base_url: str
) -> list[Sent]:
    """Closed loop: ``concurrency`` clients, each sending its next request when answered."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in indices:
        queue.put_nowait(i)
    results: list[Sent] = []

    # Clients are made before the first request: making one (its SSL context) takes a CPU slice
    # that would otherwise be counted in the latency of the burst's first requests.
    clients = [http_client(base_url, 60) for _ in range(concurrency)]

    async def client(http: httpx.AsyncClient) -> None:
        async with http:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results.append(await _one(post, http, i, i in critical))

    await asyncio.gather(*(client(http) for http in clients))
    return results


async def steady(
    post: Post,
    indices: list[int],
    critical: set[int],
    rate: float,
    base_url: str,
    connections: int,
) -> list[Sent]:
    """Open loop: request k falls due at start + k/rate, whether or not earlier ones were
    answered, and ``connections`` clients take them in turn. A server slower than the rate
    leaves requests waiting here; they are stamped from when they fell due, so that wait
    counts against the server, as it would for a reporter."""
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    results: list[Sent] = []
    # A fixed set of connections, not a task per request: thousands of requests queued in
    # httpx's pool cost the load generator more CPU than the servers under test.
    clients = [http_client(base_url, 60) for _ in range(connections)]

    async def client(http: httpx.AsyncClient) -> None:
        async with http:
            while (item := await queue.get()) is not None:
                i, due = item
                results.append(await _one(post, http, i, i in critical, due))

    workers = [asyncio.create_task(client(http)) for http in clients]
    start = time.monotonic()
    for k, i in enumerate(indices):
        due = start + k / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return results


async def _one(
    post: Post, http: httpx.AsyncClient, i: int, is_critical: bool, due: float | None = None
) -> Sent:
    sent = Sent(i, is_critical, time.monotonic() if due is None else due)
    try:
        key = await post(http, i)
    except httpx.HTTPError:
        key = None
    if key is not None:
        sent.accepted_at = time.monotonic()
        sent.key = key
    return sent


# --- figures ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank, as bench/pipeline_latency.py: with few values the p99 is the maximum."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else None,
    }


def rate(count: int, seconds: float | None) -> float | None:
    return count / seconds if seconds and seconds > 0 else None


# --- CPU time from /proc ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (Linux /proc), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _proc_stats() -> Iterator[tuple[int, list[str]]]:
    """Every live process: its pid and the fields of /proc/<pid>/stat after the name."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        yield int(entry.name), stat.rpartition(")")[2].split()  # the name may hold spaces


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, found by their parent pid in /proc/<n>/stat."""
    return [child for child, fields in _proc_stats() if int(fields[1]) == pid]


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and all its descendants (those still running)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu_seconds(current) or 0.0
        todo += children_of(current)
    return total


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (field 5 of /proc/<n>/stat)."""
    return [p for p, fields in _proc_stats() if int(fields[2]) == pgid and fields[0] != "Z"]


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def local_broker_pid(port: int) -> int | None:
    """The JVM of a broker started by escalate.kafka_local for ``port`` (its config path names
    the port), so the broker's share of the CPU can be counted too."""
    suffix = f"data-{port}/server.properties"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = cmdline(int(entry.name))
            if "kafka.Kafka" in args and any(a.endswith(suffix) for a in args):
                return int(entry.name)
    return None


class CpuMeter:
    """CPU seconds each named process used between two readings. ``processes()`` is asked at
    every reading, so children that appear later (the components of `escalate up`) count."""

    def __init__(self, processes: Callable[[], dict[str, int]]) -> None:
        self.processes = processes

    def read(self) -> dict[str, float]:
        reading = {}
        for name, pid in self.processes().items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                reading[name] = seconds
        # This process, the load generator, shares the machine too.
        times = os.times()
        reading[BENCH_CLIENT] = times.user + times.system
        return reading

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {
            name: round(after[name] - before.get(name, 0.0), 2) for name in after if name in before
        }
