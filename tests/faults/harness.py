"""The fault suite's machinery: a steady stream of reports into the whole pipeline (one process
per component, as deployed), a fault in the middle of it, and the figures afterwards.

For each accepted report the recipients of its first notice are what the policy gives it
(classifier and router run here on the same files the pipeline reads); the SMTP sink counts
mails per (incident, recipient). The figures:

- ``accepted``: reports the intake answered 202 for (a client retries with its
  ``Idempotency-Key`` while the intake is away or says 503, for up to ``retry_for_s``);
- ``complete``: accepted reports whose every expected recipient got the first notice;
- ``lost``: accepted reports that some expected recipient never got (by the deadline);
- ``failed_recorded``: recipients the relay refused for good, with a ``notify_failed`` audit
  row (the pipeline's answer to a permanent refusal: recorded, not retried);
- ``duplicates``: (incident, recipient) mailed twice with different Message-IDs, never allowed;
- ``redelivered``: mailed twice with the same Message-ID (a relay took it and the notifier died
  before committing): allowed, counted apart;
- ``audit_missing``: accepted reports without their ``received`` row plus delivered first
  notices without their ``notified`` row;
- ``recovery_s``: from the repair to the moment every report accepted before it had all its
  first notices: how long the backlog the fault left took to drain;
- ``worst_latency_s``: the longest time from 202 to a report's last expected first notice.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text

from escalate.settings import DEFAULT_CONFIG_DIR
from schemas.reports import ReportIn, ReportSubmitted
from stream_processors.classify_stage import open_incident
from stream_processors.config_holder import ConfigHolder
from stream_processors.routing.core import plan_notifications
from tests.conftest import free_port
from tests.services.pipeline import Components, create_topics

API_KEY = "faults-key"
RESULTS = Path(__file__).resolve().parents[2] / "var" / "faults" / "results.jsonl"

#: the mix of the stream, by what the default policy makes of each (critical ones also go to
#: the police); the school codes are outside the directory, one per report, so none groups
DESCRIPTIONS = (
    "Một người lạ nhắn tin riêng cho học sinh lớp 7, dụ em gửi ảnh nhạy cảm và hẹn gặp riêng.",
    "Mật khẩu lớp học trực tuyến bị lộ trên mạng, người lạ vào lớp phá buổi học.",
    "Some students keep posting insulting memes about a classmate in the class group chat.",
    "Co nguoi la vao lop hoc online bat nhac to va noi tuc, co giao phai dung buoi hoc.",
)


def report_for(case: str, n: int) -> dict[str, Any]:
    return {
        "channel": "app",
        "reporter_role": "teacher",
        "school_code": f"HN-ZZ-F{zlib.crc32(case.encode()) % 1000:03d}-{n:04d}",
        "description": DESCRIPTIONS[n % len(DESCRIPTIONS)],
    }


class Expectations:
    """Who the policy says gets each report's first notice (the pipeline's own cores)."""

    def __init__(self) -> None:
        self.holder = ConfigHolder(
            DEFAULT_CONFIG_DIR / "policy.yaml", DEFAULT_CONFIG_DIR / "directory.yaml"
        )

    def recipients(self, report: dict[str, Any], report_id: str) -> tuple[str, set[str]]:
        config = self.holder.current()
        model = ReportIn.model_validate(report)
        now = datetime.now(UTC)
        submitted = ReportSubmitted(
            report_id=report_id,
            tracking_code="ESC-TEST-0000",
            received_at=now,
            intake_client="faults",
            report=model,
        )
        decision = config.classifier.classify(model)
        incident = open_incident(submitted, decision, now).incident
        plan = plan_notifications(incident, config.policy, config.directory, now=now)
        return decision.severity.value, {
            n.recipient.email for n in plan.notifications if n.step == 0
        }


# ---- the SMTP relay, with faults of its own --------------------------------------------------


@dataclass
class Mail:
    incident: str
    kind: str
    message_id: str
    to: tuple[str, ...]
    at: float


@dataclass
class FaultySink:
    """An aiosmtpd relay that can answer 4xx for a while, or 5xx for some recipients."""

    mails: list[Mail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: answer "451" to every mail until this time.monotonic()
    transient_until: float = 0.0
    transient_answers: int = 0
    #: recipients refused for good ("550")
    refuse: frozenset[str] = frozenset()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if time.monotonic() < self.transient_until:
            self.transient_answers += 1
            return "451 4.3.0 try again later"
        msg = message_from_bytes(envelope.original_content, policy=default_policy)
        with self.lock:
            self.mails.append(
                Mail(
                    incident=str(msg["X-Escalate-Incident"] or ""),
                    kind=str(msg["X-Escalate-Kind"] or ""),
                    message_id=str(msg["Message-ID"] or ""),
                    to=tuple(envelope.rcpt_tos),
                    at=time.time(),
                )
            )
        return "250 OK"

    def first_notices(self) -> list[Mail]:
        with self.lock:
            return [m for m in self.mails if m.kind == "first_notice"]


class Relay:
    """The sink on a fixed port, which can be taken down and brought back."""

    def __init__(self, sink: FaultySink) -> None:
        self.sink = sink
        self.port = free_port()
        self._controller: Controller | None = None

    def up(self) -> None:
        if self._controller is None:
            self._controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)
            self._controller.start()

    def down(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


# ---- the stream of reports -------------------------------------------------------------------


@dataclass
class Sent:
    n: int
    report: dict[str, Any]
    key: str
    report_id: str | None = None
    attempts: int = 0
    accepted_at: float | None = None  # time.time()


class Stream:
    """``count`` reports over ``seconds``, each retried with its Idempotency-Key on 503 or a
    lost connection for up to ``retry_for_s``, as a careful client does."""

    def __init__(
        self, base_url: str, case: str, count: int, seconds: float, retry_for_s: float = 90
    ) -> None:
        self.base_url = base_url
        self.sent = [Sent(n, report_for(case, n), str(uuid.uuid4())) for n in range(count)]
        self.seconds = seconds
        self.retry_for_s = retry_for_s
        self.answers: collections.Counter[str] = collections.Counter()
        self._threads: list[threading.Thread] = []
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        workers = 8
        for w in range(workers):
            thread = threading.Thread(target=self._work, args=(w, workers), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self, first: int, step: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            for item in self.sent[first::step]:
                due = self.started + item.n * self.seconds / len(self.sent)
                time.sleep(max(0.0, due - time.monotonic()))
                self._send(client, item)

    def _send(self, client: httpx.Client, item: Sent) -> None:
        give_up = time.monotonic() + self.retry_for_s
        while time.monotonic() < give_up:
            item.attempts += 1
            try:
                resp = client.post(
                    "/v1/reports",
                    json=item.report,
                    headers={"X-API-Key": API_KEY, "Idempotency-Key": item.key},
                )
            except httpx.HTTPError as exc:
                self.answers[type(exc).__name__] += 1
                time.sleep(0.5)
                continue
            self.answers[str(resp.status_code)] += 1
            if resp.status_code == 202:
                item.report_id = resp.json()["report_id"]
                item.accepted_at = time.time()
                return
            if resp.status_code not in (503, 429):
                return  # refused for good: not accepted, and the client knows it
            time.sleep(0.5)

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.report_id is not None]


# ---- the pipeline ----------------------------------------------------------------------------


@dataclass
class Pipeline:
    base_url: str
    env: dict[str, str]
    components: Components
    relay: Relay
    database_url: str
    names: tuple[str, ...]

    def start(self, *names: str) -> None:
        self.components.start(*names)

    def kill(self, name: str) -> None:
        self.components.kill(name)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


@contextlib.contextmanager
def pipeline(
    bootstrap: str,
    isolation: str,
    database_url: str,
    tmp_path: Path,
    processors: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Pipeline]:
    relay = Relay(FaultySink())
    relay.up()
    http_port = free_port()
    env = {
        "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ESCALATE_TOPIC_PREFIX": f"{isolation}.",
        "ESCALATE_APP_ID": isolation,
        "ESCALATE_DATABASE_URL": database_url,
        "ESCALATE_SMTP_HOST": "127.0.0.1",
        "ESCALATE_SMTP_PORT": str(relay.port),
        "ESCALATE_HTTP_PORT": str(http_port),
        "ESCALATE_INTAKE_API_KEYS": f"faults={API_KEY}",
        "ESCALATE_SECRET_KEY": "faults-secret",
        "ESCALATE_VAR_DIR": str(tmp_path / "var"),
        "ESCALATE_METRICS_PORT": "0",
        **(extra_env or {}),
    }
    (tmp_path / "var").mkdir(exist_ok=True)
    create_topics(env)
    components = Components(env, tmp_path, verbose=True)
    names = ("intake", "processors", "grouper", "escalator", "notifier", "audit")
    running = Pipeline(f"http://127.0.0.1:{http_port}", env, components, relay, database_url, names)
    try:
        components.start(*names)
        for extra in range(1, processors):
            var = tmp_path / f"var-{extra}"
            var.mkdir(exist_ok=True)
            components.start_as(f"processors-{extra}", "processors", {"ESCALATE_VAR_DIR": str(var)})
        deadline = time.monotonic() + 120
        while not running.ready():
            assert time.monotonic() < deadline, "the intake was not ready in 120 s"
            time.sleep(0.5)
        yield running
    finally:
        components.stop_all()
        relay.down()


# ---- the figures -----------------------------------------------------------------------------


@dataclass
class Figures:
    case: str
    sent: int
    accepted: int
    complete: int
    lost: int
    failed_recorded: int
    duplicates: int
    redelivered: int
    audit_missing: int
    recovery_s: float
    worst_latency_s: float
    answers: dict[str, int]
    audit_verified: bool
    note: str = ""

    def record(self) -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"at": datetime.now(UTC).isoformat(), **asdict(self)}) + "\n")


def settle(
    run: Pipeline,
    stream: Stream,
    expectations: Expectations,
    repaired_at: float,
    refused: frozenset[str] = frozenset(),
    deadline_s: float = 240,
) -> tuple[dict[str, set[str]], list[Mail]]:
    """Wait until every accepted report's expected first notices arrived (or the deadline);
    the expected recipients by incident id, and the first notices received."""
    expected: dict[str, set[str]] = {}
    for item in stream.accepted():
        assert item.report_id is not None
        _, recipients = expectations.recipients(item.report, item.report_id)
        expected[f"inc-{item.report_id}"] = recipients - refused
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        run.components.supervise()  # exit 75: started again, as an orchestrator would
        got = delivered(run.relay.sink.first_notices())
        if all(want <= got.get(incident, set()) for incident, want in expected.items()):
            break
        time.sleep(0.5)
    return expected, run.relay.sink.first_notices()


def got_by(mails: list[Mail], incident: str, until: float) -> set[str]:
    return {r for m in mails if m.incident == incident and m.at <= until for r in m.to}


def delivered(mails: list[Mail]) -> dict[str, set[str]]:
    got: dict[str, set[str]] = collections.defaultdict(set)
    for mail in mails:
        got[mail.incident].update(mail.to)
    return got


def figures(
    case: str,
    run: Pipeline,
    stream: Stream,
    expectations: Expectations,
    repaired_at: float,
    refused: frozenset[str] = frozenset(),
    note: str = "",
) -> Figures:
    expected, mails = settle(run, stream, expectations, repaired_at, refused)
    got = delivered(mails)
    complete = sum(1 for i, want in expected.items() if want <= got.get(i, set()))
    # Duplicates: the same (incident, recipient) mailed more than once.
    by_pair: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for mail in mails:
        for rcpt in mail.to:
            by_pair[(mail.incident, rcpt)].append(mail.message_id)
    duplicates = sum(len(set(ids)) - 1 for ids in by_pair.values())
    redelivered = sum(len(ids) - len(set(ids)) for ids in by_pair.values())
    # When each accepted report had its last expected first notice.
    done_at: dict[str, float] = {}
    for mail in sorted(mails, key=lambda m: m.at):
        want = expected.get(mail.incident)
        if want is not None and mail.incident not in done_at:
            seen = got_by(mails, mail.incident, mail.at)
            if want <= seen:
                done_at[mail.incident] = mail.at
    accepted_at = {f"inc-{s.report_id}": s.accepted_at or 0.0 for s in stream.accepted()}
    before = [done_at[i] for i, t in accepted_at.items() if t <= repaired_at and i in done_at]
    recovery = max(0.0, max(before, default=repaired_at) - repaired_at)
    worst = max((done_at[i] - accepted_at[i] for i in done_at), default=0.0)
    audit_missing, failed_recorded = audit_gaps(run, expected, got, refused)
    return Figures(
        case=case,
        sent=len(stream.sent),
        accepted=len(expected),
        complete=complete,
        lost=len(expected) - complete,
        failed_recorded=failed_recorded,
        duplicates=duplicates,
        redelivered=redelivered,
        audit_missing=audit_missing,
        recovery_s=round(recovery, 1),
        worst_latency_s=round(worst, 1),
        answers=dict(stream.answers),
        audit_verified=audit_verify(run),
        note=note,
    )


def audit_gaps(
    run: Pipeline,
    expected: dict[str, set[str]],
    got: dict[str, set[str]],
    refused: frozenset[str],
    wait_s: float = 90,
) -> tuple[int, int]:
    """(rows missing, permanent refusals recorded), once the audit writer has caught up."""
    engine = create_engine(run.database_url)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT incident_id, event, detail FROM audit_events")
                ).fetchall()
            received = {r[0] for r in rows if r[1] == "received"}
            notified: set[tuple[str, str]] = set()
            failed: set[tuple[str, str]] = set()
            for incident, event, detail in rows:
                info = detail if isinstance(detail, dict) else json.loads(detail or "{}")
                pair = (incident, str(info.get("recipient", "")))
                if event == "notified":
                    notified.add(pair)
                elif event == "notify_failed":
                    failed.add(pair)
            missing = sum(1 for i in expected if i not in received)
            missing += sum(
                1
                for i, rcpts in got.items()
                if i in expected
                for r in rcpts
                if (i, r) not in notified
            )
            recorded = sum(1 for i in expected for r in refused if (i, r) in failed)
            if missing == 0 or time.monotonic() > deadline:
                return missing, recorded
            time.sleep(1.0)
    finally:
        engine.dispose()


def audit_verify(run: Pipeline) -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "escalate.cli", "audit", "verify"],
        env={**os.environ, **run.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode == 0
