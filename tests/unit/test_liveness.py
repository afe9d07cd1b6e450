"""The liveness check of the Kafka-only stages: behind and not moving for long is wedged."""

from __future__ import annotations

import time

from escalate.liveness import Liveness


def test_behind_and_not_moving_is_stuck_and_moving_or_caught_up_is_not() -> None:
    readings: list[tuple[int, int] | None] = []
    live = Liveness("unused", "g", ["t"], stuck_s=0.2, measure_fn=lambda: readings.pop(0))
    readings[:] = [(10, 5)]
    assert not live.check_once()  # first look
    time.sleep(0.3)
    readings[:] = [(12, 5)]
    assert not live.check_once()  # committed moved: progress
    time.sleep(0.3)
    readings[:] = [(12, 5)]
    assert live.check_once()  # behind, nothing moved for longer than stuck_s
    readings[:] = [(12, 0)]
    assert not live.check_once()  # caught up: idle is not stuck


def test_a_round_that_cannot_measure_is_no_evidence() -> None:
    live = Liveness("unused", "g", ["t"], stuck_s=0.1, measure_fn=lambda: None)
    time.sleep(0.2)
    assert not live.check_once()


def test_a_measurement_that_hangs_does_not_hold_the_check() -> None:
    import threading

    never = threading.Event()

    def hangs() -> tuple[int, int] | None:
        never.wait(60)
        return None

    live = Liveness("unused", "g", ["t"], stuck_s=0.1, measure_fn=hangs, measure_timeout_s=0.5)
    started = time.monotonic()
    assert not live.check_once()  # unmeasured: no evidence
    never.set()
    assert time.monotonic() - started < 5
