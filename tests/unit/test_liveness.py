"""The liveness check of the Kafka-only stages: behind and not moving for long is wedged."""

from __future__ import annotations

import time

from escalate.liveness import Liveness, Reading


def one(committed: int, behind: int) -> Reading:
    """A reading of a one-partition topic."""
    return {"t[0]": (committed, behind)}


def test_behind_and_not_moving_is_stuck_and_moving_or_caught_up_is_not() -> None:
    readings: list[Reading | None] = []
    live = Liveness("unused", "g", ["t"], stuck_s=0.2, measure_fn=lambda: readings.pop(0))
    readings[:] = [one(10, 5)]
    assert not live.check_once()  # first look
    time.sleep(0.3)
    readings[:] = [one(12, 5)]
    assert not live.check_once()  # committed moved: progress
    time.sleep(0.3)
    readings[:] = [one(12, 5)]
    assert live.check_once()  # behind, nothing moved for longer than stuck_s
    readings[:] = [one(12, 0)]
    assert not live.check_once()  # caught up: idle is not stuck


def test_a_round_that_cannot_measure_is_no_evidence() -> None:
    live = Liveness("unused", "g", ["t"], stuck_s=0.1, measure_fn=lambda: None)
    time.sleep(0.2)
    assert not live.check_once()


def test_a_measurement_that_hangs_does_not_hold_the_check() -> None:
    import threading

    never = threading.Event()

    def hangs() -> Reading | None:
        never.wait(60)
        return None

    live = Liveness("unused", "g", ["t"], stuck_s=0.1, measure_fn=hangs, measure_timeout_s=0.5)
    started = time.monotonic()
    assert not live.check_once()  # unmeasured: no evidence
    never.set()
    assert time.monotonic() - started < 5


def test_a_stall_gets_one_look_for_hanging_transactions_and_a_fresh_window_if_one_is_aborted() -> (
    None
):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    calls: list[float] = []
    aborted = [1]  # the first look aborts one transaction, later looks find nothing

    def repair() -> int:
        calls.append(time.monotonic())
        return aborted.pop(0) if aborted else 0

    live = Liveness(
        "unused",
        "g-repair",
        ["t"],
        stuck_s=0.4,
        repair_after_s=0.1,
        measure_fn=lambda: one(12, 5),  # behind, never moving
        repair_fn=repair,
        registry=registry,
    )
    assert not live.check_once()  # baseline
    time.sleep(0.15)
    assert not live.check_once()  # past repair_after_s: one look, which aborts one
    assert len(calls) == 1
    aborted_total = "escalate_hanging_transactions_aborted_total"
    assert registry.get_sample_value(aborted_total, {"group": "g-repair"}) == 1
    time.sleep(0.15)
    # The stall counts afresh from the abort: a second look only after repair_after_s again.
    assert not live.check_once()
    assert len(calls) == 2  # found nothing this time
    assert not live.check_once()
    assert len(calls) == 2  # once per stall, not every round
    time.sleep(0.45)
    assert live.check_once()  # nothing to abort and still not moving: stuck


def test_a_failed_look_for_hanging_transactions_is_no_repair() -> None:
    def broken() -> int:
        raise RuntimeError("brokers away")

    live = Liveness(
        "unused",
        "g",
        ["t"],
        stuck_s=0.2,
        repair_after_s=0.05,
        measure_fn=lambda: one(12, 5),
        repair_fn=broken,
    )
    assert not live.check_once()
    time.sleep(0.1)
    assert not live.check_once()  # looked, failed: no repair, no crash
    time.sleep(0.15)
    assert live.check_once()


def test_one_partition_wedged_while_the_others_move_is_stuck() -> None:
    readings: list[Reading | None] = []
    live = Liveness("unused", "g", ["t"], stuck_s=0.2, measure_fn=lambda: readings.pop(0))
    readings[:] = [{"t[0]": (10, 5), "t[1]": (7, 1)}]
    assert not live.check_once()
    time.sleep(0.3)
    readings[:] = [{"t[0]": (30, 5), "t[1]": (7, 1)}]  # t[0] moves on, t[1] holds at 7
    assert live.check_once()
    readings[:] = [{"t[0]": (40, 0), "t[1]": (8, 0)}]
    assert not live.check_once()  # both caught up
