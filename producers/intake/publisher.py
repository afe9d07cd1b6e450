"""Writes accepted reports and people's actions to Kafka and waits until the broker has them."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi.concurrency import run_in_threadpool
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from producers.intake.idempotency import report_id_for, tracking_code_for
from schemas.actions import IncidentAction
from schemas.ids import new_tracking_code
from schemas.reports import IdempotencyClaim, ReportIn, ReportSubmitted
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
        # Set once a write has been confirmed: the producer then knows the topic's partitions,
        # and ``send`` only appends to its buffer, so the event loop may call it directly.
        self._warm = False

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

    def _send(self, key: bytes, value: bytes) -> Any:
        return self._get().send(self._topic, key=key, value=value)

    def _confirm(self, key: bytes, value: bytes) -> None:
        """Write and wait for the broker's acknowledgement, blocking this thread."""
        self._send(key, value).get(timeout=self._timeout_s)
        self._warm = True

    async def _confirm_async(self, key: bytes, value: bytes) -> None:
        """Write and wait for the broker's acknowledgement without holding a thread.

        A thread per request waiting on ``future.get`` cost the intake more CPU in thread
        hand-offs than the write itself; the producer's callbacks wake the event loop instead.
        Until a first write is confirmed, ``send`` may block (connecting, fetching the topic's
        partitions), so that one runs in the thread pool.
        """
        if not self._warm:
            await run_in_threadpool(self._confirm, key, value)
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def succeeded(_: object) -> None:
            loop.call_soon_threadsafe(_settle, done, None)

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_settle, done, exc)

        future = self._send(key, value)
        future.add_callback(succeeded)
        future.add_errback(failed)
        try:
            await asyncio.wait_for(done, self._timeout_s)
        except TimeoutError as exc:
            raise KafkaTimeoutError("no acknowledgement in time") from exc

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
    """``code_key``: the secret tracking codes of ``Idempotency-Key`` reports derive from."""

    def __init__(
        self,
        bootstrap: str,
        topic_prefix: str = "",
        timeout_s: float = 10.0,
        code_key: bytes = b"",
    ) -> None:
        super().__init__(bootstrap, REPORTS_SUBMITTED.name(topic_prefix), timeout_s)
        self._code_key = code_key or secrets.token_bytes(32)

    def _new(
        self,
        report: ReportIn,
        intake_client: str,
        follow_up_of: str | None,
        claim: IdempotencyClaim | None,
    ) -> ReportSubmitted:
        return ReportSubmitted(
            # A keyed report's ids are the same however often it is written (see idempotency).
            report_id=str(uuid.uuid4()) if claim is None else report_id_for(claim),
            tracking_code=(
                new_tracking_code() if claim is None else tracking_code_for(claim, self._code_key)
            ),
            received_at=datetime.now(UTC),
            intake_client=intake_client,
            report=report,
            follow_up_of=follow_up_of,
            idempotency=claim,
        )

    @staticmethod
    def _record(submitted: ReportSubmitted) -> tuple[bytes, bytes]:
        return submitted.report_id.encode("utf-8"), submitted.model_dump_json().encode("utf-8")

    def publish(
        self,
        report: ReportIn,
        intake_client: str,
        follow_up_of: str | None = None,
        claim: IdempotencyClaim | None = None,
    ) -> ReportSubmitted:
        """``follow_up_of``: the incident a reporter adds this report to from the status page."""
        submitted = self._new(report, intake_client, follow_up_of, claim)
        try:
            self._confirm(*self._record(submitted))
        except KafkaError as exc:
            raise self._refused(submitted, exc) from exc
        self._accepted(submitted)
        return submitted

    async def publish_async(
        self,
        report: ReportIn,
        intake_client: str,
        follow_up_of: str | None = None,
        claim: IdempotencyClaim | None = None,
    ) -> ReportSubmitted:
        """``publish`` for the event loop: returns once the broker acknowledged the report."""
        submitted = self._new(report, intake_client, follow_up_of, claim)
        try:
            await self._confirm_async(*self._record(submitted))
        except KafkaError as exc:
            raise self._refused(submitted, exc) from exc
        self._accepted(submitted)
        return submitted

    @staticmethod
    def _refused(submitted: ReportSubmitted, exc: KafkaError) -> PublishError:
        log.error("report %s not stored: %s", submitted.report_id, type(exc).__name__)
        return PublishError(f"the broker did not confirm the write: {type(exc).__name__}")

    @staticmethod
    def _accepted(submitted: ReportSubmitted) -> None:
        log.info(
            "report %s accepted from %s (%s)%s",
            submitted.report_id,
            submitted.intake_client,
            submitted.report.channel,
            f", adding to incident {submitted.follow_up_of}" if submitted.follow_up_of else "",
        )


class ActionPublisher(_ConfirmedWriter):
    """Writes acknowledgements, resolutions and notes for the escalator.

    Keyed by incident id, so an incident's actions stay in order in one partition, next to its
    routing and its state (see schemas/topics.py).
    """

    _client_id = "escalate-intake-actions"

    def __init__(self, bootstrap: str, topic_prefix: str = "", timeout_s: float = 10.0) -> None:
        super().__init__(bootstrap, INCIDENTS_ACTIONS.name(topic_prefix), timeout_s)

    def publish(self, action: IncidentAction) -> None:
        try:
            self._confirm(
                action.incident_id.encode("utf-8"), action.model_dump_json().encode("utf-8")
            )
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


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():  # the request already timed out and answered 503
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)
