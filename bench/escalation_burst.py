"""How late escalation steps fire under a burst, and how long a takeover after kill -9 takes.

Runs processors, escalator and notifier as separate processes (`escalate run NAME`) against a
real broker and an aiosmtpd sink, with a policy whose deadlines are ``--ack-within`` seconds.
Publishes ``--reports`` reports at once, nobody acknowledges, and measures for every incident:

- step lateness: when the escalator produced step 1, minus the deadline it was due at (read from
  the requests themselves: a step's ``ack_due_at`` is its own time plus ``ack_within``);
- mail lateness: when the first step-1 mail reached the sink, minus the deadline.

With ``--kill`` the escalator is killed with SIGKILL shortly before the first deadline and
started again after ``--down`` seconds, and the same figures show what the takeover costs.

    .venv/bin/python bench/escalation_burst.py --reports 200
    .venv/bin/python bench/escalation_burst.py --reports 200 --kill --down 2

A benchmark, not a test: the figures depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from kafka import KafkaConsumer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from escalate import kafka_local  # noqa: E402
from escalate.settings import DEFAULT_CONFIG_DIR, Settings  # noqa: E402
from escalate.topics_admin import ensure_topics  # noqa: E402
from producers.intake.publisher import ReportPublisher  # noqa: E402
from schemas.notifications import NotificationRequest  # noqa: E402
from schemas.reports import ReportIn  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.services.pipeline import Components, start_sink, wait_for  # noqa: E402

TEXTS = [
    ("Các bạn lập nhóm chat để chế giễu, xúc phạm em mỗi ngày.", "cyberbullying"),
    ("Tài khoản Zalo của cô giáo bị chiếm và nhắn tin vay tiền phụ huynh.", "account_compromise"),
    ("Link Zoom và mật khẩu lớp 8A bị đăng lên nhóm Facebook công khai.", "credential_leak"),
    ("Một người lạ nhắn tin đòi con tôi gửi ảnh riêng tư và hẹn gặp.", None),
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: no data"
    return (
        f"{name}: n={len(values)} p50={statistics.median(values):.2f}s "
        f"p95={pct(values, 0.95):.2f}s max={max(values):.2f}s"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--ack-within", type=int, default=30)
    parser.add_argument("--kill", action="store_true")
    parser.add_argument("--down", type=float, default=2.0)
    args = parser.parse_args()

    bootstrap = os.environ.get("ESCALATE_KAFKA_BOOTSTRAP_SERVERS") or kafka_local.start(Settings())
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    ensure_topics(bootstrap, prefix)
    work = Path(tempfile.mkdtemp(prefix="escalation-bench-"))
    policy = (DEFAULT_CONFIG_DIR / "policy.yaml").read_text("utf-8")
    policy = re.sub(r"ack_within: \w+", f"ack_within: {args.ack_within}s", policy)
    (work / "policy.yaml").write_text(policy, "utf-8")
    sink, smtp = start_sink(free_port())
    components = Components(
        {
            "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ESCALATE_TOPIC_PREFIX": prefix,
            "ESCALATE_APP_ID": prefix.rstrip("."),
            "ESCALATE_SMTP_HOST": "127.0.0.1",
            "ESCALATE_SMTP_PORT": str(smtp.port),
            "ESCALATE_POLICY_FILE": str(work / "policy.yaml"),
            "ESCALATE_METRICS_PORT": "0",
            "ESCALATE_INSTANCE_ID": "bench",
        },
        work,
    )
    components.start("processors", "grouper", "escalator", "notifier")
    publisher = ReportPublisher(bootstrap, prefix)
    try:
        warm = publisher.publish(
            ReportIn(
                channel="app",
                reporter_role="teacher",
                school_code="HN-BD-THCS-001",
                description=TEXTS[0][0],
                category_hint="cyberbullying",
            ),
            "bench",
        )
        wait_for(lambda: sink.about(f"inc-{warm.report_id}"), 180, "the pipeline to start")
        started = time.time()
        incidents = []
        for i in range(args.reports):
            text, hint = TEXTS[i % len(TEXTS)]
            report = ReportIn(
                channel="app",
                reporter_role="teacher",
                school_code="HN-BD-THCS-001",
                description=f"{text} (#{i})",
                category_hint=hint,
            )
            incidents.append(f"inc-{publisher.publish(report, 'bench').report_id}")
        print(f"published {args.reports} reports in {time.time() - started:.1f}s")
        first_due = started + args.ack_within
        if args.kill:
            time.sleep(max(0.0, first_due - 1.0 - time.time()))
            components.kill("escalator")
            time.sleep(args.down)
            components.start("escalator")
            print(f"escalator killed 1 s before the first deadline, down {args.down:.1f}s")
        wanted = set(incidents)

        def stepped() -> dict[str, float]:
            return {m.incident: m.at for m in sink.mails if m.step == 1 and m.incident in wanted}

        wait_for(lambda: len(stepped()) == len(wanted), 600, "every incident's step 1")
        mails = stepped()
        consumer = KafkaConsumer(
            f"{prefix}notifications.requested.v1",
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=3000,
            isolation_level="read_committed",
        )
        requests = [NotificationRequest.model_validate_json(m.value) for m in consumer]
        consumer.close()
        due: dict[str, float] = {}
        taken: dict[str, float] = {}
        within = timedelta(seconds=args.ack_within)
        for r in requests:
            if r.incident_id not in wanted:
                continue
            if r.step == 0:
                due[r.incident_id] = r.ack_due_at.timestamp()
            elif r.step == 1:
                taken[r.incident_id] = (r.ack_due_at - within).timestamp()
        step_late = [taken[i] - due[i] for i in wanted if i in taken and i in due]
        mail_late = [mails[i] - due[i] for i in wanted if i in mails and i in due]
        print(summary("step 1 taken after its deadline", step_late))
        print(summary("first step-1 mail after the deadline", mail_late))
        dupes = len([m for m in sink.mails if m.step == 1]) - len(
            {(m.incident, tuple(m.to)) for m in sink.mails if m.step == 1}
        )
        print(f"duplicate step-1 mails: {dupes}")
    finally:
        publisher.close()
        components.stop_all()
        smtp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
