"""An intake app over the real broker for in-process tests: publisher, status view and (for
the chat bots) the conversation store, started and caught up, closed afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from escalate.settings import DEFAULT_CONFIG_DIR
from escalate.topics_admin import ensure_topics
from producers.bots.platform import ChatPlatform
from producers.bots.store import ConversationStore
from producers.intake.app import create_app
from producers.intake.incidents import IncidentView
from producers.intake.publisher import ReportPublisher
from producers.intake.schools import SchoolFinder
from schemas.directory import Directory
from schemas.yaml_loader import load_yaml_model


@dataclass
class Intake:
    app: FastAPI
    registry: CollectorRegistry
    view: IncidentView


def shipped_schools() -> SchoolFinder:
    return SchoolFinder(load_yaml_model(DEFAULT_CONFIG_DIR / "directory.yaml", Directory))


@contextlib.contextmanager
def intake_app(
    bootstrap: str,
    prefix: str,
    api_keys: dict[str, str] | None = None,
    code_key: bytes = b"tracking-code-secret-for-tests",
    bots: Sequence[ChatPlatform] = (),
    schools: Callable[[], SchoolFinder] | None = None,
) -> Iterator[Intake]:
    """One intake process's app (a fresh one is an intake after a restart)."""
    ensure_topics(bootstrap, prefix)
    publisher = ReportPublisher(bootstrap, prefix, code_key=code_key)
    view = IncidentView(bootstrap, prefix, poll_ms=200)
    store = ConversationStore(bootstrap, prefix, poll_ms=200) if bots else None
    view.start()
    if store is not None:
        store.start()
    registry = CollectorRegistry()
    try:
        assert view.wait_ready(30), "incident view did not catch up"
        assert store is None or store.wait_caught_up(30), "conversations not read back"
        finder = schools() if schools else (shipped_schools() if bots else None)
        app = create_app(
            publisher,
            api_keys or {},
            registry,
            status_view=view,
            schools=finder,
            bots=bots,
            bot_store=store,
            public_url="https://intake.example",
        )
        yield Intake(app, registry, view)
    finally:
        if store is not None:
            store.close()
        view.close()
        publisher.close()
