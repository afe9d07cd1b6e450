"""``escalate up``: the whole pipeline on one machine, until Ctrl-C.

Starts what is missing (a local broker, an SMTP capture server), prepares topics and the audit
database, then runs each component as a child process and stops them all on Ctrl-C or when
one of them dies, so a half-running pipeline never pretends to be healthy.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from escalate.components import COMPONENTS
from escalate.settings import Settings
from producers.intake.keys import hashed

SAMPLES = Path(__file__).resolve().parent / "defaults" / "sample-reports.jsonl"


def _say(message: str) -> None:
    print(f"[escalate] {message}", flush=True)


def _escalate_command() -> str:
    """How to call this CLI from the current directory (a newcomer's PATH lacks .venv/bin)."""
    script = Path(sys.executable).parent / "escalate"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _wait_ready(url: str, procs: dict[str, subprocess.Popen[bytes]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs.values()):
            return False
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def _stop_children(procs: dict[str, subprocess.Popen[bytes]], timeout_s: float = 20) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"{name} did not stop in time; killing it")
            proc.kill()
            proc.wait()


def up(settings: Settings) -> int:
    from consumers.audit.store import migrate
    from consumers.outbox import OutboxServer
    from escalate import kafka_local
    from escalate.topics_admin import ensure_topics, layout_of

    started_broker = False
    outbox: OutboxServer | None = None
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    # Explicit handlers, so Ctrl-C works even where SIGINT was inherited as ignored.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        env = dict(os.environ)
        bootstrap = settings.kafka_bootstrap_servers
        if not bootstrap:
            already = kafka_local.status(settings)["running"]
            if already:
                _say("ESCALATE_KAFKA_BOOTSTRAP_SERVERS is not set: using the running local broker")
            else:
                _say("ESCALATE_KAFKA_BOOTSTRAP_SERVERS is not set: starting the local Kafka broker")
            bootstrap = kafka_local.start(settings)
            started_broker = not already
        env["ESCALATE_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        _say(f"Kafka at {bootstrap}")
        ensure_topics(bootstrap, settings.topic_prefix, layout_of(settings))
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        migrate(settings.database_url)
        if not settings.smtp_host:
            # The notifier prints each delivery; the outbox only keeps the files.
            outbox = OutboxServer(settings, port=0, on_mail=None)
            outbox.start()
            env["ESCALATE_SMTP_HOST"] = "127.0.0.1"
            env["ESCALATE_SMTP_PORT"] = str(outbox.port)
            _say(f"no ESCALATE_SMTP_HOST: capturing mail into {settings.outbox_dir}/")
        api_key = ""
        if not settings.api_keys:
            api_key = secrets.token_urlsafe(18)
            env["ESCALATE_INTAKE_API_KEYS"] = f"local-dev={hashed(api_key)}"
            _say(f"no ESCALATE_INTAKE_API_KEYS: this run accepts X-API-Key: {api_key}")
        for name in COMPONENTS:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "escalate.cli", "run", name], env=env
            )
        base = f"http://{settings.http_host}:{settings.http_port}"
        if not _wait_ready(f"{base}/readyz", procs, timeout_s=120):
            _say("the pipeline did not become ready; stopping")
            return 1
        key_hint = api_key or "<one of ESCALATE_INTAKE_API_KEYS>"
        _say(f"ready. Web form: {base}/report  (English: {base}/report?lang=en)")
        sample = SAMPLES.relative_to(Path.cwd()) if SAMPLES.is_relative_to(Path.cwd()) else SAMPLES
        _say(
            "send the sample reports: "
            f"{_escalate_command()} send --url {base} --api-key {key_hint} {sample}"
        )
        _say("Ctrl-C stops everything.")
        while not stopping:
            dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
            if dead:
                time.sleep(1)  # a Ctrl-C reaches the children too; let ours be noticed first
                if stopping:
                    break
                _say(f"component stopped unexpectedly: {json.dumps(dead)}; stopping the rest")
                return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        _say("stopping")
        with contextlib.suppress(KeyboardInterrupt):
            _stop_children(procs)
            if outbox is not None:
                outbox.stop()
            if started_broker:
                kafka_local.stop(settings)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _say("stopped")
