"""Entry points of the pipeline's processes; each gets the one Settings object.

Every component runs as its own process (``escalate run NAME``), as it would in production;
``escalate up`` only supervises them.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from prometheus_client import REGISTRY, start_http_server

from consumers.audit.worker import AuditConfig
from consumers.notifier.retry import RetryPolicy
from consumers.notifier.sender import SmtpConfig
from consumers.notifier.worker import NotifierConfig
from escalate.settings import Settings

log = logging.getLogger("escalate")

COMPONENTS = ("intake", "processors", "notifier", "audit")
METRICS_OFFSET = {"processors": 1, "notifier": 2, "audit": 3}


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


def run_intake(settings: Settings) -> int:
    import uvicorn
    from fastapi import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from producers.intake.app import create_app
    from producers.intake.publisher import ReportPublisher

    publisher = ReportPublisher(require_bootstrap(settings), settings.topic_prefix)
    app = create_app(publisher, settings.api_keys, REGISTRY)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    try:
        uvicorn.run(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            access_log=False,
        )
    finally:
        publisher.close()
    return 0


def run_processors(settings: Settings) -> int:
    import faust

    from stream_processors.app import create_app
    from stream_processors.config_holder import ConfigHolder

    bootstrap = require_bootstrap(settings)
    _serve_metrics(settings, "processors")
    holder = ConfigHolder(settings.policy_file, settings.directory_file)
    app = create_app(settings, bootstrap, holder, REGISTRY)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.spinner = None  # its terminal escape codes only garble the shared `escalate up` console
    worker.execute_from_commandline()
    return 0


def smtp_config(settings: Settings) -> SmtpConfig:
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_sender,
        timeout_s=settings.smtp_timeout_s,
    )


def notifier_config(settings: Settings) -> NotifierConfig:
    """The notifier's share of the settings; the fallback desk comes from the directory."""
    from schemas.directory import Directory
    from schemas.yaml_loader import load_yaml_model

    directory = load_yaml_model(settings.directory_file, Directory)
    return NotifierConfig(
        smtp=smtp_config(settings),
        retry=RetryPolicy(
            max_attempts=settings.notify_max_attempts, backoff_s=settings.notify_backoff_s
        ),
        topic_prefix=settings.topic_prefix,
        app_id=settings.app_id,
        fallback_recipients=tuple(directory.city_office.intake_desk_emails),
    )


def audit_config(settings: Settings) -> AuditConfig:
    return AuditConfig(topic_prefix=settings.topic_prefix, app_id=settings.app_id)


def run_notifier(settings: Settings) -> int:
    from consumers.notifier.worker import Notifier

    bootstrap = require_bootstrap(settings)
    _serve_metrics(settings, "notifier")
    stop = _stop_event()
    Notifier(notifier_config(settings), print_deliveries=True).run(bootstrap, stop)
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
    "notifier": run_notifier,
    "audit": run_audit,
}
