"""Writes accepted reports and people's actions to Kafka and waits until the broker has them."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import UTC, datetime

from kafka import KafkaProducer
from kafka.errors import KafkaError

from schemas.actions import IncidentAction
from schemas.ids import new_tracking_code
from schemas.reports import ReportIn, ReportSubmitted
from schemas.topics import INCIDENTS_ACTIONS, REPORTS_SUBMITTED

log = logging.getLogger("escalate.intake")


class PublishError(RuntimeError):
    """The broker did not confirm the write: the caller must not be told 'accepted'."""


class _ConfirmedWriter:
    """One idempotent producer (acks=all) shared by all requests; kafka-python's is thread-safe.

    Created on first use, so the intake starts (and says 'not ready') while the broker is away.
    """

    _client_id = "escalate-intake"

    def __init__(self, bootstrap: str, topic: str, timeout_s: float) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._timeout_s = timeout_s
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _get(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                try:
                    self._producer = KafkaProducer(
                        bootstrap_servers=self._bootstrap.split(","),
                        acks="all",
                        enable_idempotence=True,
                        linger_ms=0,
                        max_block_ms=int(self._timeout_s * 1000),
                        bootstrap_timeout_ms=int(self._timeout_s * 1000),
                        request_timeout_ms=int(self._timeout_s * 1000),
                        retries=5,
                        client_id=self._client_id,
                    )
                except KafkaError as exc:
                    raise PublishError(f"cannot reach the broker: {type(exc).__name__}") from exc
            return self._producer

    def ready(self) -> bool:
        """True when the producer can see the topic's partitions."""
        try:
            producer = self._get()
            return bool(producer.partitions_for(self._topic))
        except (KafkaError, PublishError):
            return False

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None


class ReportPublisher(_ConfirmedWriter):
    def __init__(self, bootstrap: str, topic_prefix: str = "", timeout_s: float = 10.0) -> None:
        super().__init__(bootstrap, REPORTS_SUBMITTED.name(topic_prefix), timeout_s)

    def publish(
        self, report: ReportIn, intake_client: str, follow_up_of: str | None = None
    ) -> ReportSubmitted:
        """``follow_up_of``: the incident a reporter adds this report to from the status page."""
        submitted = ReportSubmitted(
            report_id=str(uuid.uuid4()),
            tracking_code=new_tracking_code(),
            received_at=datetime.now(UTC),
            intake_client=intake_client,
            report=report,
            follow_up_of=follow_up_of,
        )
        producer = self._get()
        try:
            future = producer.send(
                self._topic,
                key=submitted.report_id.encode("utf-8"),
                value=submitted.model_dump_json().encode("utf-8"),
            )
            future.get(timeout=self._timeout_s)
        except KafkaError as exc:
            log.error("report %s not stored: %s", submitted.report_id, type(exc).__name__)
            raise PublishError(
                f"the broker did not confirm the write: {type(exc).__name__}"
            ) from exc
        log.info(
            "report %s accepted from %s (%s)%s",
            submitted.report_id,
            intake_client,
            report.channel,
            f", adding to incident {follow_up_of}" if follow_up_of else "",
        )
        return submitted


class ActionPublisher(_ConfirmedWriter):
    """Writes acknowledgements, resolutions and notes for the escalator.

    Keyed by incident id, so an incident's actions stay in order in one partition, next to its
    routing and its state (see schemas/topics.py).
    """

    _client_id = "escalate-intake-actions"

    def __init__(self, bootstrap: str, topic_prefix: str = "", timeout_s: float = 10.0) -> None:
        super().__init__(bootstrap, INCIDENTS_ACTIONS.name(topic_prefix), timeout_s)

    def publish(self, action: IncidentAction) -> None:
        producer = self._get()
        try:
            future = producer.send(
                self._topic,
                key=action.incident_id.encode("utf-8"),
                value=action.model_dump_json().encode("utf-8"),
            )
            future.get(timeout=self._timeout_s)
        except KafkaError as exc:
            log.error(
                "action %s on incident %s not stored: %s",
                action.action_id,
                action.incident_id,
                type(exc).__name__,
            )
            raise PublishError(
                f"the broker did not confirm the write: {type(exc).__name__}"
            ) from exc
        # Who and what, never the note: it may repeat details of the child's report.
        log.info(
            "action %s (%s) on incident %s recorded for %s via %s",
            action.action_id,
            action.kind,
            action.incident_id,
            action.tier,
            action.via,
        )
