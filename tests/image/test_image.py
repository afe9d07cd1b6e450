"""The container image, built and run (``make test-image``; podman, no registry needed).

``deploy/image/build`` makes the image (its layer cache makes a second call cheap), then every
component runs from it as its own container, the way an orchestrator would run them: the
one-shot jobs first (``migrate``, ``topics``), then intake, processors, grouper, escalator,
notifier and audit, each with the image's own user, a read-only root filesystem and a tmpfs on
the var directory (what a Kubernetes pod with ``readOnlyRootFilesystem`` and an emptyDir gets).
They talk to the test suite's own broker, PostgreSQL and SMTP sink over the host's network
namespace, on loopback addresses only. One report posted to the intake must come out as mail.

Timings (build, start to healthy, report to mail) are shown at the end of the session and
appended to var/image/results.jsonl (tests/image/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import REPO, free_port
from tests.faults.harness import Expectations
from tests.image.conftest import Timings
from tests.services.kafka import RESERVED_PORTS as KAFKA_TEST_PORTS
from tests.services.pipeline import Sink, start_sink

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(1800)]

BUILD = REPO / "deploy" / "image" / "build"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["version"]
TAG = f"localhost/incident-escalation:{VERSION}"
USER_ID = "10001"
WORKERS = ("processors", "grouper", "escalator", "notifier", "audit")
API_KEY = "image-test-key"
#: ports other sessions on this machine own; none of ours may land on them
RESERVED_PORTS = KAFKA_TEST_PORTS

#: one report the default policy escalates at once (immediate danger), to a school in the
#: shipped directory, so its first notice has recipients at several tiers
REPORT = {
    "channel": "app",
    "reporter_role": "parent",
    "school_code": "HN-DD-THCS-003",
    "description": "Một người lạ đang đòi gặp con tôi ngay tối nay, cháu rất sợ.",
    "immediate_danger": True,
}


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """podman on the build's own storage and settings (``deploy/image/build podman ...``)."""
    done = subprocess.run(
        [str(BUILD), "podman", *args], capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert done.returncode == 0, f"podman {' '.join(args[:3])}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def image(timings: Timings) -> str:
    """The image, built (or found up to date) by the project's own build script."""
    started = time.monotonic()
    built = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=1500)
    assert built.returncode == 0, f"deploy/image/build failed:\n{built.stderr[-5000:]}"
    timings["build_call_s"] = time.monotonic() - started
    base = re.search(r"^base: \S+ \((\S+), ([\d.]+) s\)$", built.stdout, re.M)
    made = re.search(r"^image: (\S+) \(built in ([\d.]+) s, (\d+) MB\)$", built.stdout, re.M)
    assert base and made, f"unexpected build output:\n{built.stdout}"
    timings["base"] = base[1]
    timings["base_s"] = float(base[2])
    timings["image_build_s"] = float(made[2])
    timings["image_mb"] = int(made[3])
    assert made[1] == TAG
    return TAG


def test_image_metadata(image: str) -> None:
    """What an orchestrator reads from the image: user, entry point, probe, ports, labels."""
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == f"{USER_ID}:{USER_ID}"
    assert config["Entrypoint"] == ["/opt/escalate/bin/escalate", "run"]
    assert config["Cmd"] == ["intake"]
    # Kept only because the build uses the docker format; the OCI format drops it silently.
    assert inspected["ManifestType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert inspected["Healthcheck"]["Test"] == ["CMD", "/opt/escalate/bin/escalate", "health"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["ESCALATE_HTTP_HOST"] == "0.0.0.0"
    assert env["ESCALATE_VAR_DIR"] == "/var/lib/escalate"
    assert set(config["ExposedPorts"]) == {f"{port}/tcp" for port in (8000, *range(9401, 9406))}
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_runtime_has_no_build_tools(image: str) -> None:
    """The runtime stage got the venv and nothing that builds or installs code."""
    found = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        # The base's own Python may bring pip (the official image's does); the venv must not.
        "for tool in gcc cc g++ clang make /opt/escalate/bin/pip; do"
        ' command -v "$tool"; done;'
        " /opt/escalate/bin/python -c 'import pip' 2>/dev/null && echo venv-has-pip;"
        " ls /wheels /opt/build 2>/dev/null; true",
    ).stdout
    assert found.strip() == "", f"build leftovers in the runtime image:\n{found}"


def metrics_base() -> int:
    """A base for ESCALATE_METRICS_PORT whose five worker ports (base+1..base+5) are free."""
    for _ in range(50):
        base = free_port()
        ports = range(base + 1, base + 6)
        if RESERVED_PORTS.isdisjoint(ports) and all(_free(p) for p in ports):
            return base
    raise AssertionError("no five free consecutive ports for the workers' metrics")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


@dataclass
class Containers:
    """Containers of this test, all named with one prefix and all removed at the end."""

    prefix: str
    image: str
    env: dict[str, str]
    names: list[str] = field(default_factory=list)

    def args(self) -> list[str]:
        env = [arg for key, value in self.env.items() for arg in ("--env", f"{key}={value}")]
        return [
            "--network",
            "host",
            # As Kubernetes runs it: nothing writable but the var directory (an emptyDir there,
            # a tmpfs here, owned by the image's user thanks to U), not even /tmp.
            "--read-only",
            "--read-only-tmpfs=false",
            "--tmpfs",
            "/var/lib/escalate:rw,size=256m,mode=0700,U",
            *env,
        ]

    def job(self, name: str, timeout: float = 300) -> str:
        """A one-shot job to completion; its output."""
        done = podman(
            "run", "--rm", "--name", f"{self.prefix}-{name}", *self.args(), self.image, name,
            timeout=timeout,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"`run {name}` exited {done.returncode}:\n{done.stderr}"
        return done.stdout + done.stderr

    def start(self, component: str) -> str:
        name = f"{self.prefix}-{component}"
        self.names.append(name)
        podman("run", "--detach", "--name", name, *self.args(), self.image, component)
        return name

    def healthy(self, name: str, component: str) -> bool:
        """``escalate health COMPONENT`` inside the container. Not the image's HEALTHCHECK (no
        argument: any component on the host): with the host's network shared by all six, that
        one passes for every container as soon as one of them answers."""
        done = podman("exec", name, "escalate", "health", component, check=False, timeout=60)
        return done.returncode == 0

    def healthcheck(self, name: str) -> bool:
        """The image's own HEALTHCHECK, run now (no systemd here to run it on a timer)."""
        return podman("healthcheck", "run", name, check=False, timeout=60).returncode == 0

    def running(self, name: str) -> bool:
        state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout
        return state.strip() == "running"

    def logs(self) -> str:
        parts = []
        for name in self.names:
            out = podman("logs", "--tail", "40", name, check=False)
            parts.append(f"--- {name} ---\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    def remove(self) -> None:
        if self.names:
            podman("rm", "--force", "--time", "10", *self.names, check=False, timeout=180)


@contextlib.contextmanager
def containers(image: str, env: dict[str, str]) -> Iterator[Containers]:
    running = Containers(f"escalate-test-{uuid.uuid4().hex[:8]}", image, env)
    try:
        yield running
    finally:
        running.remove()
        left = podman("ps", "--all", "--filter", f"name={running.prefix}", "--quiet").stdout
        assert left.strip() == "", f"containers left behind: {left}"


def wait_until(check: Any, timeout_s: float, what: str, explain: Any = lambda: "") -> float:
    """Poll ``check`` until true; the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}\n{explain()}"
            )
        time.sleep(1.0)
    return time.monotonic() - started


def audit_events(database_url: str, incident: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT event FROM audit_events WHERE incident_id = :i"), {"i": incident}
            ).fetchall()
        return {row[0] for row in rows}
    finally:
        engine.dispose()


def test_components_from_the_image_turn_a_report_into_mail(
    image: str,
    kafka_bootstrap: str,
    postgres_url: str,
    isolation: str,
    timings: Timings,
) -> None:
    sink: Sink
    sink, smtp = start_sink(free_port())
    http_port = free_port()
    env = {
        "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ESCALATE_TOPIC_PREFIX": f"{isolation}.",
        "ESCALATE_APP_ID": isolation,
        "ESCALATE_DATABASE_URL": postgres_url,
        "ESCALATE_SMTP_HOST": "127.0.0.1",
        "ESCALATE_SMTP_PORT": str(smtp.port),
        "ESCALATE_HTTP_PORT": str(http_port),
        "ESCALATE_METRICS_PORT": str(metrics_base()),
        "ESCALATE_INTAKE_API_KEYS": f"image={API_KEY}",
        "ESCALATE_SECRET_KEY": f"image-test-{isolation}",
    }
    try:
        with containers(image, env) as run:
            started = time.monotonic()
            assert "latest schema" in run.job("migrate")
            timings["migrate_s"] = time.monotonic() - started
            started = time.monotonic()
            run.job("topics")
            timings["topics_s"] = time.monotonic() - started

            # All six at once, then each one's HEALTHCHECK until it passes: the seconds from its
            # own `podman run` to healthy, as an orchestrator's start-up probe would see them.
            started_at = {}
            names = {}
            for component in ("intake", *WORKERS):
                started_at[component] = time.monotonic()
                names[component] = run.start(component)
            timings["start_containers_s"] = time.monotonic() - started_at["intake"]
            waiting = set(names)
            deadline = time.monotonic() + 300
            while waiting:
                for component in sorted(waiting):
                    name = names[component]
                    assert run.running(name), f"{component} stopped:\n{run.logs()}"
                    if run.healthy(name, component):
                        timings[f"healthy_{component}_s"] = time.monotonic() - started_at[component]
                        waiting.discard(component)
                assert time.monotonic() < deadline, f"not healthy in 300 s: {waiting}\n{run.logs()}"
            timings["all_healthy_s"] = time.monotonic() - started_at["intake"]

            # The image's user, not root and not whatever podman would pick; and the probe an
            # orchestrator runs without being told which component this is.
            for component, name in names.items():
                assert run.healthcheck(name), f"{component}: HEALTHCHECK failed"
                uid = podman("exec", name, "id", "-u").stdout.strip()
                assert uid == USER_ID, f"{component} runs as uid {uid}"

            # The intake answers on the host's side of the container too.
            base_url = f"http://127.0.0.1:{http_port}"
            wait_until(lambda: _ready(base_url), 120, "the intake's /readyz", explain=run.logs)
            timings["intake_ready_s"] = time.monotonic() - started_at["intake"]

            posted = time.monotonic()
            answer = httpx.post(
                f"{base_url}/v1/reports",
                json=REPORT,
                headers={"X-API-Key": API_KEY, "Idempotency-Key": str(uuid.uuid4())},
                timeout=30,
            )
            assert answer.status_code == 202, answer.text
            report_id = answer.json()["report_id"]
            incident = f"inc-{report_id}"
            _, expected = Expectations().recipients(REPORT, report_id)
            assert expected, "the policy gives this report no first-notice recipients"

            def first_notices() -> set[str]:
                return {
                    rcpt
                    for mail in sink.about(incident)
                    if mail.kind == "first_notice"
                    for rcpt in mail.to
                }

            # Generous: the faust processors may still be joining their group.
            wait_until(
                lambda: expected <= first_notices(),
                timeout_s=420,
                what=f"first notices of {incident} to {sorted(expected)}",
                explain=lambda: f"got {sorted(first_notices())}\n{run.logs()}",
            )
            timings["report_to_mail_s"] = time.monotonic() - posted
            assert first_notices() == expected

            # The audit container wrote the trail to PostgreSQL.
            wait_until(
                lambda: {"received", "notified"} <= audit_events(postgres_url, incident),
                timeout_s=120,
                what=f"audit rows of {incident}",
                explain=run.logs,
            )
            timings["report_to_audit_s"] = time.monotonic() - posted

            for component, name in names.items():
                assert run.running(name), f"{component} stopped:\n{run.logs()}"
    finally:
        smtp.stop()


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
