"""Test doubles shared by the test modules, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FakeRecord:
    """A stand-in for kafka-python's ConsumerRecord with the fields the consumers read."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


# ---- fault injection: a stage that raises on one marked message, for the poison tests ----

POISON_CLASSIFY_SCHOOL = "HN-POISON-CLASSIFY"
POISON_ROUTE_SCHOOL = "HN-POISON-ROUTE"


def faulty_processors() -> int:
    """``escalate run processors`` with cores that raise on the marked schools.

    No value the contracts accept makes the real cores raise any more (the property tests hold
    them to that), so the tests plant the fault themselves to show what the agents do with one.
    """
    from typing import Any

    from escalate.cli import main
    from stream_processors import app

    real_open, real_plan = app.open_incident, app.plan_notifications

    def open_incident(submitted: Any, *args: Any, **kwargs: Any) -> Any:
        if submitted.report.school_code == POISON_CLASSIFY_SCHOOL:
            raise OverflowError("planted fault")
        return real_open(submitted, *args, **kwargs)

    def plan_notifications(incident: Any, *args: Any, **kwargs: Any) -> Any:
        if incident.school_code == POISON_ROUTE_SCHOOL:
            raise OverflowError("planted fault")
        return real_plan(incident, *args, **kwargs)

    app.open_incident = open_incident  # type: ignore[assignment]
    app.plan_notifications = plan_notifications  # type: ignore[assignment]
    return main(["run", "processors"])
