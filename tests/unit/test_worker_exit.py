"""A crashed faust (mode) worker ends with 75, "start a fresh one"; a clean stop is not a crash."""

from __future__ import annotations

import asyncio
import os
import signal

import mode
import pytest

from escalate.components import run_worker
from escalate.liveness import EXIT_STUCK


class Crashing(mode.Service):
    @mode.Service.task
    async def _fail(self) -> None:
        await asyncio.sleep(0.05)
        await self.crash(RuntimeError("Not in the middle of a transaction"))


class Stopping(mode.Service):
    @mode.Service.task
    async def _stop_soon(self) -> None:
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # what an orchestrator sends to stop a pod


def worker_for(service: mode.Service) -> mode.Worker:
    return mode.Worker(service, loglevel="CRITICAL", quiet=True, loop=asyncio.new_event_loop())


def test_a_crash_ends_with_75() -> None:
    assert run_worker(worker_for(Crashing())) == EXIT_STUCK


def test_a_requested_stop_is_not_a_crash() -> None:
    worker = worker_for(Stopping())
    with pytest.raises(SystemExit) as ended:
        run_worker(worker)
    assert ended.value.code in (0, None)
    assert worker.crash_reason is None
