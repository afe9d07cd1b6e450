"""The faust application: thin agents around the pure classification and routing cores.

Messages travel as raw bytes and are parsed here with the pydantic contracts, so a message that
does not parse becomes a dead letter with its reason instead of crashing the agent. A message
that parses but makes a core raise is dead-lettered too: each agent first computes everything
it will emit (pure), and only then emits, so a failure leaves no half-written output behind,
and the agent goes on with the next message. Broker errors while emitting are not caught: they
are the infrastructure's, and the worker restarts from the last committed transaction.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import faust
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ValidationError

from consumers.dead_letters import DeadLetters, Reason, describe_failure
from schemas.ids import incident_id_for_report, school_key
from schemas.incidents import IncidentClassified
from schemas.reports import ReportSubmitted
from schemas.topics import (
    AUDIT_EVENTS,
    DEAD_LETTER,
    INCIDENTS_CLASSIFIED,
    REPORTS_CLASSIFIED,
    REPORTS_SUBMITTED,
    TopicSpec,
    requests_topic_for,
)
from schemas.validation import validation_reason
from stream_processors import aiokafka_patches
from stream_processors.classify_stage import open_incident
from stream_processors.config_holder import ConfigHolder, LoadedConfig
from stream_processors.offsets import PATIENCE_S, CommitGuard, guarded_consumer
from stream_processors.routing.core import plan_notifications

log = logging.getLogger("escalate.processors")

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ProcessorConfig:
    """What the processors need from the settings (the composition root maps them)."""

    app_id: str
    topic_prefix: str = ""
    #: one exactly-once transaction per this many records, or per interval, whichever first:
    #: every commit costs a round of transaction markers, so one per record caps a burst at a
    #: few dozen reports a second; downstream read_committed consumers see a record only once
    #: its transaction commits, so the interval bounds the latency this adds
    commit_every: int = 50
    commit_interval_s: float = 0.1
    #: faust creates a directory for its table files even with the in-memory store; by
    #: default that lands in the working directory, so the composition root points it here
    data_dir: str | None = None
    #: how long a hole in the reports' acknowledged offsets may stay open before the worker
    #: starts again from it (see stream_processors/offsets)
    skipped_record_patience_s: float = PATIENCE_S


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.classified = Counter(
            "escalate_reports_classified_total",
            "Reports classified, by severity and category.",
            ["severity", "category"],
            registry=registry,
        )
        self.routed = Counter(
            "escalate_notifications_requested_total",
            "Notification requests emitted, by tier.",
            ["tier"],
            registry=registry,
        )
        self.unknown_school = Counter(
            "escalate_unknown_school_total",
            "Incidents whose school code is not in the directory.",
            registry=registry,
        )
        self.policy_info = Gauge(
            "escalate_policy_loaded_timestamp_seconds",
            "When the policy in force was loaded, labelled by its version.",
            ["version"],
            registry=registry,
        )
        self.second_opinion = Counter(
            "escalate_second_opinion_total",
            "Reports the model gave a second opinion on, by what it changed: agreed (nothing), "
            "raised (the severity, pending review), category (proposed where the rules had "
            "none), failed (the rules decided alone).",
            ["outcome"],
            registry=registry,
        )
        self.model_loaded = Gauge(
            "escalate_classifier_model_loaded",
            "1 when the learned second opinion is loaded (labelled by its version), 0 when the "
            "rules classify alone because the model file was refused or none is configured.",
            ["model_version"],
            registry=registry,
        )
        self.policy_refused = Counter(
            "escalate_policy_reload_refused_total",
            "Changed policy or directory files that failed validation and were not applied.",
            registry=registry,
        )


def _incident_of(key: bytes | None, *, report_key: bool) -> str | None:
    if not key:
        return None
    text = key.decode("utf-8", "replace")
    return incident_id_for_report(text) if report_key else text


def _now() -> datetime:
    return datetime.now(UTC)


def _raw_topic(app: faust.App, spec: TopicSpec, prefix: str) -> Any:
    return app.topic(
        spec.name(prefix),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=spec.partitions,
    )


def _encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode("utf-8")


def create_app(
    config: ProcessorConfig,
    bootstrap: str,
    holder: ConfigHolder,
    registry: CollectorRegistry,
) -> faust.App:
    """Build the processor app. Nothing runs until a faust worker starts it."""
    if not aiokafka_patches.apply():
        log.warning("aiokafka's coordinator lookup is not patched: a dying broker may crash us")
    prefix = config.topic_prefix
    metrics = ProcessorMetrics(registry)
    metrics.policy_info.labels(holder.current().policy_version).set_to_current_time()
    model = holder.model
    metrics.model_loaded.labels(model.model_version if model else "none").set(1 if model else 0)

    def on_reload(config: LoadedConfig) -> None:
        metrics.policy_info.clear()  # one series: the version in force
        metrics.policy_info.labels(config.policy_version).set_to_current_time()

    holder.subscribe(on_reload=on_reload, on_refused=lambda _problem: metrics.policy_refused.inc())
    # faust's own default datadir is relative to the working directory.
    datadir = config.data_dir or f"{config.app_id}-processors-data"
    app = faust.App(
        f"{config.app_id}-processors",
        datadir=datadir,
        broker=[f"kafka://{b.strip()}" for b in bootstrap.split(",")],
        processing_guarantee="exactly_once",
        store="memory://",
        web_enabled=False,
        topic_partitions=REPORTS_SUBMITTED.partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=config.commit_every,
        broker_commit_interval=config.commit_interval_s,
        # A crashed worker's partitions move to a live one after this, not after a minute.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
    # faust's consumer, corrected so that no record is passed over (stream_processors/offsets).
    # Only the intake writes reports, without transactions: an offset not acknowledged there is
    # a report not processed. The incidents topic is written in transactions, so there only the
    # offsets actually handed on to the agents count.
    guard = CommitGuard({REPORTS_SUBMITTED.name(prefix)}, config.skipped_record_patience_s)
    app.transport.Consumer = guarded_consumer(guard)  # type: ignore[misc]
    reports = _raw_topic(app, REPORTS_SUBMITTED, prefix)
    incidents = _raw_topic(app, INCIDENTS_CLASSIFIED, prefix)

    async def emit(event: Any, spec: TopicSpec, key: bytes | None, model: BaseModel) -> None:
        """Write inside the transaction of the partition the event came from.

        faust's own ``topic.send`` picks the transactional producer from the *destination*
        partition, which leaves writes to re-keyed or unsubscribed topics outside the
        transaction that commits the source offset (or hanging in one that never commits).
        Sending through the source partition's producer makes output and offset one atomic
        commit, which is what exactly-once has to mean here.
        """
        source = event.message.tp
        transactional_id = (
            f"{app.conf.id}-{app.assignor.group_for_topic(source.topic)}-{source.partition}"
        )
        await app.producer.send(
            spec.name(prefix),
            key,
            _encode(model),
            None,
            None,
            None,
            transactional_id=transactional_id,
        )

    letters = {stage: DeadLetters(stage, registry) for stage in ("classify", "route")}

    async def dead_letter(event: Any, stage: str, reason: Reason, detail: str) -> None:
        message = event.message
        incident = _incident_of(message.key, report_key=stage == "classify")
        letter = letters[stage].of(message, reason, detail, incident)
        await emit(event, DEAD_LETTER, message.key, letter)

    async def valid(
        stream: faust.StreamT[bytes], model: type[M], stage: str
    ) -> AsyncIterator[tuple[Any, M]]:
        """The stream's events parsed into ``model``; the rest become dead letters."""
        async for event in stream.events():
            try:
                if event.value is None:
                    raise ValueError("empty message")
                yield event, model.model_validate_json(event.value)
            except ValidationError as exc:
                await dead_letter(event, stage, Reason.unparseable, validation_reason(exc))
            except ValueError as exc:
                await dead_letter(event, stage, Reason.unparseable, f"invalid message: {exc}")

    Output = list[tuple[TopicSpec, bytes, BaseModel]]

    def classified(submitted: ReportSubmitted) -> Output:
        judge = holder.current().classifier
        failures = judge.model_failures
        decision = judge.classify(submitted.report)
        result = open_incident(submitted, decision, _now())
        key = result.incident.incident_id.encode("utf-8")
        # Keyed by school: one school's reports meet in one partition of the grouper, which
        # decides whether this one opens an incident or joins an open one.
        school = school_key(result.incident.school_code).encode("utf-8")
        metrics.classified.labels(decision.severity.value, decision.category.value).inc()
        view = decision.second_opinion
        if judge.model_failures > failures:
            metrics.second_opinion.labels("failed").inc()
        elif view is not None:
            outcome = "raised" if view.raised_from else "category" if view.category_from else ""
            metrics.second_opinion.labels(outcome or "agreed").inc()
        return [(REPORTS_CLASSIFIED, school, result.incident), (AUDIT_EVENTS, key, result.audit)]

    def routed(incident: IncidentClassified) -> Output:
        config = holder.current()
        plan = plan_notifications(incident, config.policy, config.directory, now=_now())
        key = incident.incident_id.encode("utf-8")
        if plan.audit.detail.get("unknown_school"):
            metrics.unknown_school.inc()
        out: Output = []
        for request in plan.notifications:
            out.append((requests_topic_for(request), key, request))
            metrics.routed.labels(request.recipient.tier.value).inc()
        out.append((AUDIT_EVENTS, key, plan.audit))
        return out

    async def run_stage(
        stream: faust.StreamT[bytes], model: type[M], stage: str, core: Callable[[M], Output]
    ) -> None:
        async for event, value in valid(stream, model, stage):
            try:
                outputs = core(value)
            except Exception as exc:
                # One message must never stop the agent: set it aside with the reason and go on.
                await dead_letter(
                    event, stage, Reason.failed, f"{stage} raised {describe_failure(exc)}"
                )
                continue
            for spec, key, model_out in outputs:
                await emit(event, spec, key, model_out)

    @app.agent(reports, name="classify")
    async def classify(stream: faust.StreamT[bytes]) -> None:
        await run_stage(stream, ReportSubmitted, "classify", classified)

    @app.agent(incidents, name="route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        await run_stage(stream, IncidentClassified, "route", routed)

    return app
