"""The faust application: thin agents around the pure classification and routing cores.

Messages travel as raw bytes and are parsed here with the pydantic contracts, so a message that
does not parse becomes a dead letter with its reason instead of crashing the agent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import faust
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ValidationError

from escalate.settings import Settings
from schemas.audit import DeadLetter
from schemas.incidents import IncidentClassified
from schemas.reports import ReportSubmitted
from schemas.topics import (
    AUDIT_EVENTS,
    DEAD_LETTER,
    INCIDENTS_CLASSIFIED,
    NOTIFICATIONS_REQUESTED,
    REPORTS_SUBMITTED,
    TopicSpec,
)
from schemas.validation import validation_reason
from stream_processors.classify_stage import open_incident
from stream_processors.config_holder import ConfigHolder, LoadedConfig
from stream_processors.routing.core import plan_notifications

log = logging.getLogger("escalate.processors")

M = TypeVar("M", bound=BaseModel)


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
        self.dead_letters = Counter(
            "escalate_dead_letters_total",
            "Messages sent to the dead-letter topic, by stage.",
            ["stage"],
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
        self.policy_refused = Counter(
            "escalate_policy_reload_refused_total",
            "Changed policy or directory files that failed validation and were not applied.",
            registry=registry,
        )


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
    settings: Settings,
    bootstrap: str,
    holder: ConfigHolder,
    registry: CollectorRegistry,
) -> faust.App:
    """Build the processor app. Nothing runs until a faust worker starts it."""
    prefix = settings.topic_prefix
    metrics = ProcessorMetrics(registry)
    metrics.policy_info.labels(holder.current().policy_version).set_to_current_time()

    def on_reload(config: LoadedConfig) -> None:
        metrics.policy_info.clear()  # one series: the version in force
        metrics.policy_info.labels(config.policy_version).set_to_current_time()

    holder.subscribe(on_reload=on_reload, on_refused=lambda _problem: metrics.policy_refused.inc())
    app = faust.App(
        f"{settings.app_id}-processors",
        broker=[f"kafka://{b.strip()}" for b in bootstrap.split(",")],
        processing_guarantee="exactly_once",
        store="memory://",
        web_enabled=False,
        topic_partitions=REPORTS_SUBMITTED.partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=1,
        broker_commit_interval=0.5,
        # A crashed worker's partitions move to a live one after this, not after a minute.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
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

    async def dead_letter(event: Any, stage: str, reason: str) -> None:
        message = event.message
        letter = DeadLetter(
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=(message.key or b"").decode("utf-8", "replace") or None,
            stage=stage,
            reason=reason,
            at=_now(),
            payload=(message.value or b"").decode("utf-8", "replace"),
        )
        metrics.dead_letters.labels(stage).inc()
        log.warning(
            "dead letter from %s[%s]@%s at stage %s",
            message.topic,
            message.partition,
            message.offset,
            stage,
        )
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
                await dead_letter(event, stage, validation_reason(exc))
            except ValueError as exc:
                await dead_letter(event, stage, f"invalid message: {exc}")

    @app.agent(reports, name="classify")
    async def classify(stream: faust.StreamT[bytes]) -> None:
        async for event, submitted in valid(stream, ReportSubmitted, "classify"):
            config = holder.current()
            decision = config.classifier.classify(submitted.report)
            result = open_incident(submitted, decision, _now())
            key = result.incident.incident_id.encode("utf-8")
            await emit(event, INCIDENTS_CLASSIFIED, key, result.incident)
            await emit(event, AUDIT_EVENTS, key, result.audit)
            metrics.classified.labels(decision.severity.value, decision.category.value).inc()

    @app.agent(incidents, name="route")
    async def route(stream: faust.StreamT[bytes]) -> None:
        async for event, incident in valid(stream, IncidentClassified, "route"):
            config = holder.current()
            plan = plan_notifications(incident, config.policy, config.directory, now=_now())
            key = incident.incident_id.encode("utf-8")
            if plan.audit.detail.get("unknown_school"):
                metrics.unknown_school.inc()
            for request in plan.notifications:
                await emit(event, NOTIFICATIONS_REQUESTED, key, request)
                metrics.routed.labels(request.recipient.tier.value).inc()
            await emit(event, AUDIT_EVENTS, key, plan.audit)

    return app
