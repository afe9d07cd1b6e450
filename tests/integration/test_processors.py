"""The faust processors on the real broker: dead letters, and exactly-once across a crash.

faust-streaming's exactly-once has open bug reports, so this is proved here rather than trusted:
a processor killed with SIGKILL mid-stream and restarted must leave every output exactly once
for a read_committed consumer.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from escalate.settings import DEFAULT_CONFIG_DIR
from escalate.topics_admin import ensure_topics
from producers.intake.publisher import ReportPublisher
from schemas.audit import AuditEvent, DeadLetter
from schemas.ids import incident_id_for_report
from schemas.incidents import IncidentClassified
from schemas.notifications import NotificationRequest
from schemas.reports import ReportIn
from schemas.topics import (
    AUDIT_EVENTS,
    DEAD_LETTER,
    NOTIFICATIONS_REQUESTED,
    REPORTS_CLASSIFIED,
    REPORTS_SUBMITTED,
)
from tests.conftest import REPO
from tests.fakes import POISON_CLASSIFY_SCHOOL, POISON_ROUTE_SCHOOL


def read_all(bootstrap: str, topic: str, committed: bool = True) -> list[bytes]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=2500,
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


class Processors:
    COMMAND = ("-m", "escalate.cli", "run", "processors")

    def __init__(self, bootstrap: str, isolation: str, log: Path) -> None:
        self.env = {
            **os.environ,
            "ESCALATE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ESCALATE_TOPIC_PREFIX": f"{isolation}.",
            "ESCALATE_APP_ID": isolation,
            "ESCALATE_METRICS_PORT": "0",
            "PYTHONPATH": str(REPO),
        }
        self.log = log
        self.command: tuple[str, ...] = self.COMMAND
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *self.command],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def processors(kafka_bootstrap: str, isolation: str, tmp_path: Path) -> Iterator[Processors]:
    ensure_topics(kafka_bootstrap, f"{isolation}.")
    runner = Processors(kafka_bootstrap, isolation, tmp_path / "processors.log")
    yield runner
    runner.stop()


@pytest.fixture
def grouper(kafka_bootstrap: str, isolation: str, tmp_path: Path) -> Iterator[Processors]:
    """The grouper, for tests that need the route agent fed (it forwards new incidents)."""
    runner = Processors(kafka_bootstrap, isolation, tmp_path / "grouper.log")
    runner.command = ("-m", "escalate.cli", "run", "grouper")
    yield runner
    runner.stop()


def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def report(i: int) -> ReportIn:
    return ReportIn(
        channel="app",
        reporter_role="teacher",
        school_code="HN-BD-THCS-001",
        description=f"Có người lạ vào phòng học trực tuyến lớp {i} bật nhạc ồn ào phá lớp.",
    )


def test_poison_messages_go_to_the_dead_letter_topic_with_a_reason(
    processors: Processors, kafka_bootstrap: str, isolation: str
) -> None:
    prefix = f"{isolation}."
    raw = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    raw.send(REPORTS_SUBMITTED.name(prefix), key=b"k1", value=b"{not json").get(10)
    raw.send(REPORTS_SUBMITTED.name(prefix), key=b"k2", value=b'{"report_id": "x"}').get(10)
    raw.close()
    good = ReportPublisher(kafka_bootstrap, prefix).publish(report(1), "test")
    processors.start()
    incidents_topic = REPORTS_CLASSIFIED.name(prefix)
    wait_until(lambda: len(read_all(kafka_bootstrap, incidents_topic)) == 1, 90, "the good report")
    letters = [
        DeadLetter.model_validate_json(v)
        for v in read_all(kafka_bootstrap, DEAD_LETTER.name(prefix))
    ]
    assert sorted(letter.key or "" for letter in letters) == ["k1", "k2"]
    by_key = {letter.key: letter for letter in letters}
    assert "Invalid JSON" in by_key["k1"].reason
    assert "tracking_code" in by_key["k2"].reason and "Field required" in by_key["k2"].reason
    assert by_key["k1"].payload == "{not json"
    assert all(letter.stage == "classify" for letter in letters)
    incident = IncidentClassified.model_validate_json(read_all(kafka_bootstrap, incidents_topic)[0])
    assert incident.report_ids == [good.report_id]


def test_a_message_that_makes_a_core_raise_is_set_aside_and_the_next_one_goes_through(
    processors: Processors, grouper: Processors, kafka_bootstrap: str, isolation: str
) -> None:
    prefix = f"{isolation}."
    processors.command = ("-c", "import sys, tests.fakes as f; sys.exit(f.faulty_processors())")
    publisher = ReportPublisher(kafka_bootstrap, prefix)
    bad_classify = publisher.publish(
        report(1).model_copy(update={"school_code": POISON_CLASSIFY_SCHOOL}), "test"
    )
    bad_route = publisher.publish(
        report(2).model_copy(update={"school_code": POISON_ROUTE_SCHOOL}), "test"
    )
    good = publisher.publish(report(3), "test")
    publisher.close()
    processors.start()
    grouper.start()  # between classify and route: new incidents reach the route agent through it
    requests_topic = NOTIFICATIONS_REQUESTED.name(prefix)

    def routed() -> set[str]:
        found = [
            NotificationRequest.model_validate_json(v)
            for v in read_all(kafka_bootstrap, requests_topic)
        ]
        return {report_id for r in found for report_id in r.report_ids}

    wait_until(lambda: good.report_id in routed(), 90, "the good report to be routed")
    wait_until(
        lambda: len(read_all(kafka_bootstrap, DEAD_LETTER.name(prefix))) >= 2, 30, "dead letters"
    )
    assert routed() == {good.report_id}
    letters = {
        letter.stage: letter
        for letter in (
            DeadLetter.model_validate_json(v)
            for v in read_all(kafka_bootstrap, DEAD_LETTER.name(prefix))
        )
    }
    assert set(letters) == {"classify", "route"}
    assert letters["classify"].incident_id == incident_id_for_report(bad_classify.report_id)
    assert letters["route"].incident_id == incident_id_for_report(bad_route.report_id)
    for letter in letters.values():
        assert letter.reason.startswith("failed: ") and "OverflowError" in letter.reason
        assert "planted fault" not in letter.reason  # the message may quote the report; not kept
    assert processors.proc is not None and processors.proc.poll() is None, "the worker died"


def test_outputs_exactly_once_for_read_committed_across_a_crash(
    processors: Processors, kafka_bootstrap: str, isolation: str
) -> None:
    prefix = f"{isolation}."
    total = 300
    publisher = ReportPublisher(kafka_bootstrap, prefix)
    sent = {publisher.publish(report(i), "test").report_id for i in range(total)}
    publisher.close()
    incidents_topic = REPORTS_CLASSIFIED.name(prefix)

    processors.start()
    wait_until(
        lambda: len(read_all(kafka_bootstrap, incidents_topic, committed=False)) >= 20,
        90,
        "the first outputs",
    )
    processors.stop(signal.SIGKILL)
    processors.start()
    audit_topic = AUDIT_EVENTS.name(prefix)
    wait_until(lambda: len(read_all(kafka_bootstrap, audit_topic)) >= total, 180, "all outputs")
    time.sleep(3)  # let anything extra (a duplicate) surface before counting

    incidents = [
        IncidentClassified.model_validate_json(v)
        for v in read_all(kafka_bootstrap, incidents_topic)
    ]
    ids = collections.Counter(i.report_ids[0] for i in incidents)
    assert set(ids) == sent
    assert max(ids.values()) == 1, "an incident was committed twice"

    audit = [AuditEvent.model_validate_json(v) for v in read_all(kafka_bootstrap, audit_topic)]
    per_kind = collections.Counter(a.event.value for a in audit)
    assert per_kind == {"classified": total}
    assert len({a.event_id for a in audit}) == len(audit)


def test_a_changed_policy_takes_effect_without_restart(
    processors: Processors, kafka_bootstrap: str, isolation: str, tmp_path: Path
) -> None:
    prefix = f"{isolation}."
    policy = tmp_path / "policy.yaml"
    directory = tmp_path / "directory.yaml"
    shutil.copy(DEFAULT_CONFIG_DIR / "policy.yaml", policy)
    shutil.copy(DEFAULT_CONFIG_DIR / "directory.yaml", directory)
    processors.env["ESCALATE_POLICY_FILE"] = str(policy)
    processors.env["ESCALATE_DIRECTORY_FILE"] = str(directory)
    processors.start()
    publisher = ReportPublisher(kafka_bootstrap, prefix)
    incidents_topic = REPORTS_CLASSIFIED.name(prefix)

    def decisions() -> dict[str, IncidentClassified]:
        """By report id: partitions are read in no particular order."""
        found = [
            IncidentClassified.model_validate_json(v)
            for v in read_all(kafka_bootstrap, incidents_topic)
        ]
        return {i.report_ids[0]: i for i in found}

    one = publisher.publish(report(1), "test").report_id
    wait_until(lambda: one in decisions(), 90, "the first decision")
    first = decisions()[one].decision
    assert first.severity == "medium"

    # The operator makes intrusions 'high' and asks for a reload.
    text = policy.read_text("utf-8")
    assert "  intrusion: medium" in text
    policy.write_text(text.replace("  intrusion: medium", "  intrusion: high"), "utf-8")
    reload = subprocess.run(
        [sys.executable, "-m", "escalate.cli", "policy", "reload"],
        env=processors.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reload.returncode == 0, reload.stderr
    time.sleep(3)
    two = publisher.publish(report(2), "test").report_id
    wait_until(lambda: two in decisions(), 90, "the second decision")
    second = decisions()[two].decision
    assert second.severity == "high"
    assert second.rules_version != first.rules_version
    assert second.rules_version in reload.stdout

    # A broken edit is refused; the pipeline keeps working with the version it had.
    policy.write_text("severities: [oops\n", "utf-8")
    refused = subprocess.run(
        [sys.executable, "-m", "escalate.cli", "policy", "reload"],
        env=processors.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "policy.yaml:" in refused.stderr
    time.sleep(3)
    three = publisher.publish(report(3), "test").report_id
    wait_until(lambda: three in decisions(), 90, "the third decision")
    assert decisions()[three].decision.rules_version == second.rules_version
    publisher.close()


def test_offsets_where_no_report_is_do_not_hold_the_processors_back(
    processors: Processors, kafka_bootstrap: str, isolation: str
) -> None:
    """The reports topic has no holes past the first record the processors fetch, so they hold a
    commit back at any offset not processed (stream_processors/offsets.py). Before
    that first record there can be offsets with no report to read: here another writer's
    aborted transaction, where the group's committed offset points. Holding there would end the
    worker every 10 s for a hole no restart fills; it must read on and commit past it."""
    prefix = f"{isolation}."
    topic = REPORTS_SUBMITTED.name(prefix)
    writer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{isolation}-x")
    writer.init_transactions()
    writer.begin_transaction()
    for _ in range(3):
        writer.send(topic, key=b"x", value=b"never committed", partition=0)
    writer.flush()
    writer.abort_transaction()  # offsets 0-2, and the abort marker at 3
    writer.close()
    group = f"{isolation}-processors"
    committer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    try:
        committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, "", -1)})
    finally:
        committer.close()
    publisher = ReportPublisher(kafka_bootstrap, prefix)
    sent: dict[str, int] = {}
    while list(sent.values()).count(0) < 2:  # reports keyed onto partition 0, past the hole
        submitted = publisher.publish(report(len(sent)), "test")
        sent[submitted.report_id] = partition_of(submitted.report_id, REPORTS_SUBMITTED.partitions)
        assert len(sent) < 200
    publisher.close()

    processors.start()
    incidents_topic = REPORTS_CLASSIFIED.name(prefix)

    def classified() -> set[str]:
        found = read_all(kafka_bootstrap, incidents_topic)
        return {IncidentClassified.model_validate_json(v).report_ids[0] for v in found}

    wait_until(lambda: classified() == set(sent), 90, "every report classified")
    end = 4 + list(sent.values()).count(0)
    wait_until(lambda: committed_at(kafka_bootstrap, group, topic, 0) == end, 30, "the commit")
    time.sleep(12)  # longer than the guard's patience: a hold would have ended the worker
    assert processors.proc is not None and processors.proc.poll() is None, "the worker ended"
    assert "holding the commit back" not in processors.log.read_text("utf-8")


def partition_of(key: str, partitions: int) -> int:
    """Where the intake's producer puts a key (Kafka's default partitioner)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


def committed_at(bootstrap: str, group: str, topic: str, partition: int) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    try:
        return consumer.committed(TopicPartition(topic, partition))
    finally:
        consumer.close()
