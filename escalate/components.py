"""Entry points of the pipeline's processes; each gets the one Settings object.

Every component runs as its own process (``escalate run NAME``), as it would in production;
``escalate up`` only supervises them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, start_http_server

from escalate.liveness import EXIT_STUCK, Liveness
from escalate.settings import Settings
from schemas.topics import INCIDENTS_CLASSIFIED, REPORTS_SUBMITTED

if TYPE_CHECKING:  # the CLI imports this module; the components' libraries load on use
    import mode
    from fastapi import FastAPI

    from consumers.audit.worker import AuditConfig
    from consumers.notifier.sender import SmtpConfig
    from consumers.notifier.worker import NotifierConfig
    from stream_processors.classification.model import TrainedModel

log = logging.getLogger("escalate")

COMPONENTS = ("intake", "processors", "grouper", "escalator", "notifier", "audit")
METRICS_OFFSET = {"processors": 1, "notifier": 2, "audit": 3, "escalator": 4, "grouper": 5}


def require_bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap_servers:
        raise SystemExit(
            "ESCALATE_KAFKA_BOOTSTRAP_SERVERS is not set (use `escalate up`, which starts a local"
            " broker, or point it at your cluster)"
        )
    return settings.kafka_bootstrap_servers


def _serve_metrics(settings: Settings, component: str) -> None:
    if settings.metrics_port > 0:
        port = settings.metrics_port + METRICS_OFFSET[component]
        start_http_server(port, addr=settings.http_host)
        log.info("%s metrics on http://%s:%d/metrics", component, settings.http_host, port)


def _stop_event() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def intake_app(settings: Settings) -> FastAPI:
    """The intake's ASGI app; its lifespan starts the incident view and closes the producers."""
    from contextlib import asynccontextmanager

    from fastapi import Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from producers.bots.platform import (
        ChatPlatform,
        MessengerPlatform,
        TelegramPlatform,
        ZaloPlatform,
    )
    from producers.bots.store import ConversationStore
    from producers.intake.action_page import HelpContact
    from producers.intake.actions import ActionDesk
    from producers.intake.app import create_app
    from producers.intake.form_guard import FORM_RATE, FormGuard
    from producers.intake.incidents import IncidentView
    from producers.intake.keys import KeyRing
    from producers.intake.publisher import ActionPublisher, ReportPublisher
    from producers.intake.ratelimit import (
        CLIENT_RATE,
        FOLLOW_UP_RATE,
        LOOKUP_RATE,
        share_of_rate,
    )
    from producers.intake.schools import SchoolFinder
    from schemas.directory import Directory
    from schemas.policy import Policy
    from schemas.yaml_loader import load_yaml_model

    bootstrap = require_bootstrap(settings)
    # Read once at start: link lifetime and school names change rarely, and a restart of the
    # intake is cheap (reports in flight are either acknowledged 202 or refused 503).
    policy = load_yaml_model(settings.policy_file, Policy)
    directory = load_yaml_model(settings.directory_file, Directory)
    publisher = ReportPublisher(
        bootstrap,
        settings.topic_prefix,
        # Every intake process derives a keyed report's tracking code alike (see idempotency).
        code_key=hashlib.sha256(
            b"escalate-tracking-codes\0" + settings.secret_key.get_secret_value().encode("utf-8")
        ).digest(),
    )
    action_publisher = ActionPublisher(bootstrap, settings.topic_prefix)
    incidents = IncidentView(bootstrap, settings.topic_prefix)
    desk = ActionDesk(
        secret_key=settings.secret_key.get_secret_value(),
        previous_secret_keys=settings.previous_keys,
        link_max_age_s=int(policy.acknowledgement.link_valid_for.total_seconds()),
        authority_keys=KeyRing(settings.authority_keys),
        publisher=action_publisher,
        incidents=incidents,
        school_names={
            school.code: school.name
            for district in directory.districts
            for school in district.schools
        },
        help_contact=HelpContact(directory.city_office.name, directory.city_office.emails[0]),
        public_url=settings.links_base_url,
    )
    bots: list[ChatPlatform] = []
    bot_store: ConversationStore | None = None
    token = settings.telegram_bot_token.get_secret_value()
    if token:
        bots.append(
            TelegramPlatform(
                token, settings.telegram_secret_token.get_secret_value(), settings.telegram_api_base
            )
        )
    if settings.messenger_app_secret.get_secret_value():
        bots.append(
            MessengerPlatform(
                settings.messenger_app_secret.get_secret_value(),
                settings.messenger_page_token.get_secret_value(),
                settings.messenger_verify_token.get_secret_value(),
                settings.messenger_api_base,
            )
        )
    if settings.zalo_app_id:
        bots.append(
            ZaloPlatform(
                settings.zalo_app_id,
                settings.zalo_oa_secret.get_secret_value(),
                settings.zalo_access_token.get_secret_value(),
                settings.zalo_api_base,
            )
        )
    if bots:
        bot_store = ConversationStore(bootstrap, settings.topic_prefix)
    # Each worker process counts in its own memory unless the storage is shared; then each gets
    # its share of the limit, so an address never gets more than the whole of it.
    shares = settings.intake_workers if settings.intake_rate_limit_storage == "memory://" else 1
    clients = KeyRing(settings.api_keys)
    authorities = KeyRing(settings.authority_keys)
    for variable, ring in (
        ("ESCALATE_INTAKE_API_KEYS", clients),
        ("ESCALATE_AUTHORITY_API_KEYS", authorities),
    ):
        if ring.plain:
            # Names only, never the keys.
            log.warning(
                "%s holds %d plain key(s) (%s): anyone who reads the configuration can use "
                "them; store their sha256 instead (`escalate key new NAME` prints both)",
                variable,
                len(ring.plain),
                ", ".join(str(who[0] if isinstance(who, tuple) else who) for who in ring.plain),
            )
    app = create_app(
        publisher,
        clients,
        REGISTRY,
        actions=desk,
        lookup_rate=share_of_rate(LOOKUP_RATE, shares),
        follow_up_rate=share_of_rate(FOLLOW_UP_RATE, shares),
        rate_limit_storage=settings.intake_rate_limit_storage,
        schools=SchoolFinder(directory),
        bots=bots,
        bot_store=bot_store,
        public_url=settings.links_base_url,
        form_guard=FormGuard(
            settings.secret_key.get_secret_value(),
            settings.previous_keys,
            public_url=settings.links_base_url,
        ),
        form_rate=share_of_rate(FORM_RATE, shares),
        client_rate=share_of_rate(CLIENT_RATE, shares),
    )
    multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        if not multiprocess_dir:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
        # Several worker processes: whichever answers sums the counts all of them wrote.
        merged = CollectorRegistry()
        MultiProcessCollector(merged, multiprocess_dir)  # type: ignore[no-untyped-call]
        return Response(generate_latest(merged), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        incidents.start()
        if bot_store is not None:
            bot_store.start()
        try:
            yield
        finally:
            for platform in bots:
                await platform.aclose()
            if bot_store is not None:
                bot_store.close()
            incidents.close()
            action_publisher.close()
            publisher.close()

    app.router.lifespan_context = lifespan
    return app


def intake_worker_app() -> FastAPI:
    """uvicorn's factory in each intake worker process: the settings come from the environment,
    as they did for the process that started the workers."""
    return intake_app(Settings())


def run_intake(settings: Settings) -> int:
    import uvicorn

    # No access log: the action links' paths carry the recipients' tokens.
    if settings.intake_workers == 1:
        uvicorn.run(
            intake_app(settings),
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            access_log=False,
        )
        return 0
    # Several processes accept on one port (uvicorn's supervisor restarts one that dies). Python
    # serves one request at a time per process, so this is how the intake uses more than a core.
    # prometheus_client must know the shared directory before the workers import it.
    metrics_dir = settings.var_dir / "intake-metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    uvicorn.run(
        "escalate.components:intake_worker_app",
        factory=True,
        workers=settings.intake_workers,
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
    )
    return 0


def load_model(settings: Settings) -> TrainedModel | None:
    """The model, loaded once per process; a refused file leaves the rules to decide alone."""
    from stream_processors.classification.model import ModelError, load

    if settings.model_file is None:
        log.warning("no model configured (ESCALATE_MODEL_FILE is empty): the rules decide alone")
        return None
    try:
        model = load(settings.model_file, settings.model_sha256)
    except ModelError as exc:
        log.error("model refused, the rules decide alone: %s", exc)
        return None
    log.info("model %s loaded from %s", model.model_version, settings.model_file)
    return model


def run_processors(settings: Settings) -> int:
    import faust

    from stream_processors.app import ProcessorConfig, create_app
    from stream_processors.config_holder import ConfigHolder

    bootstrap = require_bootstrap(settings)
    _serve_metrics(settings, "processors")
    holder = ConfigHolder(settings.policy_file, settings.directory_file, model=load_model(settings))
    data_dir = settings.var_dir / "processors"
    data_dir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    config = ProcessorConfig(
        app_id=settings.app_id,
        topic_prefix=settings.topic_prefix,
        commit_every=settings.processors_commit_every,
        commit_interval_s=settings.processors_commit_interval_s,
        data_dir=str(data_dir),
    )
    app = create_app(config, bootstrap, holder, REGISTRY)
    Liveness(
        bootstrap,
        app.conf.id,
        [
            REPORTS_SUBMITTED.name(settings.topic_prefix),
            INCIDENTS_CLASSIFIED.name(settings.topic_prefix),
        ],
    ).start()
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.spinner = None  # its terminal escape codes only garble the shared `escalate up` console
    return run_worker(worker)


def consumer_groups(app_id: str) -> list[str]:
    """The consumer groups that commit their offsets inside transactions: the processors (faust
    app id), the grouper and the escalator. tests/unit/test_hanging.py checks these against
    the components themselves."""
    return [f"{app_id}-processors", f"{app_id}-grouper", f"{app_id}-escalator"]


def run_worker(worker: mode.Worker) -> int:
    """Run a faust (mode) worker to its end; 75 when it crashed, for the orchestrator to start
    a fresh one.

    A crashed faust worker stops consuming for good and mode ends it with status 1, which reads
    as a bug to fix, not a process to restart. Seen here: the survivor of two processors, taking
    the dead one's partitions, sent into a transaction its rebalance had not reopened
    (aiokafka ``IllegalOperation``) and crashed. Starting again is safe with exactly-once: the
    new producers fence the old transactional ids, the open transactions are aborted, and the
    records are read again from the committed offsets.
    """
    try:
        worker.execute_from_commandline()
    except SystemExit:
        if worker.crash_reason is not None:
            log.error(
                "the worker crashed (%s); ending with %d for a fresh start",
                type(worker.crash_reason).__name__,
                EXIT_STUCK,
            )
            return EXIT_STUCK
        raise
    return 0  # pragma: no cover - execute_from_commandline always ends with SystemExit


def run_escalator(settings: Settings) -> int:
    from stream_processors.config_holder import ConfigHolder
    from stream_processors.escalation.worker import Escalator, EscalatorConfig

    bootstrap = require_bootstrap(settings)
    _serve_metrics(settings, "escalator")
    stop = _stop_event()
    holder = ConfigHolder(settings.policy_file, settings.directory_file)
    config = EscalatorConfig(
        topic_prefix=settings.topic_prefix,
        app_id=settings.app_id,
        instance_id=settings.instance_id,
    )
    escalator = Escalator(config, holder)
    Liveness(bootstrap, escalator.group_id, escalator.options.inputs).start()
    escalator.run(bootstrap, stop)
    return 0


def run_grouper(settings: Settings) -> int:
    from stream_processors.config_holder import ConfigHolder
    from stream_processors.grouping.worker import Grouper, GrouperConfig

    bootstrap = require_bootstrap(settings)
    _serve_metrics(settings, "grouper")
    stop = _stop_event()
    holder = ConfigHolder(settings.policy_file, settings.directory_file)
    config = GrouperConfig(
        topic_prefix=settings.topic_prefix,
        app_id=settings.app_id,
        instance_id=settings.instance_id,
        # Its own key, derived: the grouping hashes never share a key with signed links.
        hash_key=hashlib.sha256(
            b"escalate-grouping\0" + settings.secret_key.get_secret_value().encode("utf-8")
        ).digest(),
    )
    grouper = Grouper(config, holder)
    Liveness(bootstrap, grouper.options.group_id, grouper.options.inputs).start()
    grouper.run(bootstrap, stop)
    return 0


def smtp_config(settings: Settings) -> SmtpConfig:
    from consumers.notifier.sender import SmtpConfig

    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_sender,
        timeout_s=settings.smtp_timeout_s,
        username=settings.smtp_username or None,
        password=settings.smtp_password.get_secret_value(),
        security=settings.smtp_security,
    )


def notifier_config(settings: Settings) -> NotifierConfig:
    """The notifier's share of the settings; the fallback desk comes from the directory."""
    from consumers.notifier.retry import RetryPolicy
    from consumers.notifier.worker import LinkConfig, NotifierConfig
    from schemas.directory import Directory
    from schemas.yaml_loader import load_yaml_model

    directory = load_yaml_model(settings.directory_file, Directory)
    # The directory names each webhook's secret; its value comes from this process's
    # environment only, so the directory file can be shared and reviewed.
    names = {
        hook.secret_env
        for office in (directory.city_office, directory.police)
        for hook in office.webhooks
    } | {
        hook.secret_env
        for district in directory.districts
        for hooks in (
            district.office.webhooks,
            district.police.webhooks,
            *(school.webhooks for school in district.schools),
        )
        for hook in hooks
    }
    missing = sorted(n for n in names if not os.environ.get(n))
    if missing:
        log.warning(
            "webhook secrets not set: %s; deliveries to those webhooks will fail and be recorded",
            ", ".join(missing),
        )
    return NotifierConfig(
        webhook_secrets={n: os.environ[n] for n in names if os.environ.get(n)},
        telegram_token=settings.telegram_bot_token.get_secret_value(),
        telegram_api_base=settings.telegram_api_base,
        smtp=smtp_config(settings),
        retry=RetryPolicy(
            max_attempts=settings.notify_max_attempts, backoff_s=settings.notify_backoff_s
        ),
        topic_prefix=settings.topic_prefix,
        app_id=settings.app_id,
        fallback_recipients=tuple(directory.city_office.intake_desk_emails),
        links=LinkConfig(
            secret_key=settings.secret_key.get_secret_value(), public_url=settings.links_base_url
        ),
    )


def audit_config(settings: Settings) -> AuditConfig:
    from consumers.audit.worker import AuditConfig

    return AuditConfig(topic_prefix=settings.topic_prefix, app_id=settings.app_id)


def run_notifier(settings: Settings) -> int:
    from consumers.notifier.worker import Notifier

    bootstrap = require_bootstrap(settings)
    _serve_metrics(settings, "notifier")
    stop = _stop_event()
    config = notifier_config(settings)
    # Two lanes, two consumer loops: urgent requests (critical, or danger ticked) are mailed by
    # a loop of their own and never wait behind a burst of lesser mail.
    urgent = Notifier(dataclasses.replace(config, lane="urgent"), print_deliveries=True)

    def urgent_lane() -> None:
        try:
            urgent.run(bootstrap, stop)
        except BaseException:
            log.exception("the urgent notifier lane stopped")
            raise
        finally:
            stop.set()  # never one lane without the other: stop, and be restarted whole

    lane = threading.Thread(target=urgent_lane, name="notifier-urgent")
    lane.start()
    try:
        Notifier(config, print_deliveries=True).run(bootstrap, stop)
    finally:
        stop.set()
        lane.join(timeout=30)
    return 0


def run_audit(settings: Settings) -> int:
    from consumers.audit.store import make_engine
    from consumers.audit.worker import AuditWriter

    bootstrap = require_bootstrap(settings)
    _serve_metrics(settings, "audit")
    stop = _stop_event()
    AuditWriter(audit_config(settings), make_engine(settings.database_url)).run(bootstrap, stop)
    return 0


RUNNERS: dict[str, Callable[[Settings], int]] = {
    "intake": run_intake,
    "processors": run_processors,
    "escalator": run_escalator,
    "grouper": run_grouper,
    "notifier": run_notifier,
    "audit": run_audit,
}
