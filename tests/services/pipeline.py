"""The pipeline as separate processes, the way it is deployed: one ``escalate run NAME`` each.

Tests start the components they need against the test broker and an SMTP sink, kill one with
SIGKILL when a test is about crashes, and start it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any, TypeVar

from aiosmtpd.controller import Controller

T = TypeVar("T")


@dataclass
class Mail:
    to: list[str]
    msg: Message
    at: float  # time.time() when the sink took it

    @property
    def kind(self) -> str:
        return str(self.msg["X-Escalate-Kind"] or "")

    @property
    def incident(self) -> str:
        return str(self.msg["X-Escalate-Incident"] or "")

    @property
    def step(self) -> int:
        return int(self.msg["X-Escalate-Step"] or -1)

    def body(self) -> str:
        part = self.msg.get_body(preferencelist=("plain",))
        return "" if part is None else str(part.get_content())  # type: ignore[union-attr]


@dataclass
class Sink:
    """A real SMTP server (aiosmtpd) that keeps what it received, with arrival times."""

    mails: list[Mail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.original_content, policy=default_policy)
        with self.lock:
            self.mails.append(Mail(list(envelope.rcpt_tos), msg, time.time()))
        return "250 OK"

    def about(self, incident_id: str) -> list[Mail]:
        with self.lock:
            return [m for m in self.mails if m.incident == incident_id]


def start_sink(port: int) -> tuple[Sink, Controller]:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    return sink, controller


def create_topics(env: dict[str, str]) -> str:
    """``escalate topics create`` with ``env``, the way an operator creates them; its output."""
    created = subprocess.run(
        [sys.executable, "-m", "escalate.cli", "topics", "create"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    return created.stdout


class Components:
    """``escalate run NAME`` subprocesses sharing one environment; logs under ``log_dir``."""

    def __init__(self, env: dict[str, str], log_dir: Path, verbose: bool = False) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: components log at INFO (partitions taken, state restored): for failures to explain
        self.verbose = verbose

    def start(self, *names: str) -> None:
        for name in names:
            self.start_as(name, name)

    def start_as(self, label: str, component: str, extra_env: dict[str, str] | None = None) -> None:
        """``escalate run COMPONENT`` under another name (a second instance of one component),
        logging to ``LABEL.log``; ``extra_env`` for what must differ between instances."""
        with (self.log_dir / f"{label}.log").open("ab") as out:
            self.procs[label] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "escalate.cli",
                    *(["-v"] if self.verbose else []),
                    "run",
                    component,
                ],
                env={**self.env, **(extra_env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text("utf-8", "replace")

    def supervise(self) -> list[str]:
        """Start again every component that ended with exit 75 (stuck: "start a fresh one"),
        as an orchestrator's restart policy does; the names restarted."""
        restarted = []
        for name, proc in list(self.procs.items()):
            if proc.poll() == 75:
                self.start(name)
                restarted.append(name)
        return restarted

    def stacks(self) -> str:
        """For a failure message: where each live component's threads wait (``SIGUSR1``, which
        ``escalate`` answers with a stack dump of every thread on its log)."""
        marks = {}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                marks[name] = len(self.log(name))
                proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        parts = []
        for name, start in marks.items():
            dumped = self.log(name)[start:]
            frames = [
                ln for ln in dumped.splitlines() if ln.startswith(("Thread", "Current", "  File"))
            ]
            parts.append(f"--- {name}: threads ---")
            parts.extend(ln[:200] for ln in frames[:120])
        return "\n".join(parts)

    def troubles(self, lines: int = 12) -> str:
        """For a failure message: each component's last warnings and errors, if any."""
        marks = ("WARNING", "ERROR", "CRITICAL", "Traceback")
        parts = []
        for name in self.procs:
            found = [ln for ln in self.log(name).splitlines() if any(m in ln for m in marks)]
            if found:
                parts.append(f"--- {name}: last of {len(found)} ---")
                parts.extend(ln[:300] for ln in found[-lines:])
        return "\n".join(parts)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(check: Callable[[], T], timeout_s: float = 90, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)
