"""One fix to aiokafka 0.14.0 that exactly-once processing needs when a broker dies.

A transactional producer looks up its coordinators (transaction and group) with a
FindCoordinator request to any broker. If that broker is the one that just died, the request
fails with a *connection* error, which aiokafka's sender treats as fatal (only "coordinator not
available", "node not ready" and timeouts are retried there): the sender task ends, every later
send fails with "Not in the middle of a transaction", and the faust worker crashes. Measured on
the three-broker test cluster (tests/integration/test_kafka_cluster.py): the processors exited in
about one run of three when the victim broker was killed. The consumer side of the same library
already retries any retriable error of this lookup, so the fix is to do the same in the sender:
refresh metadata, wait the retry backoff, ask again.

Applied once, at import of the processors' app; a version of aiokafka that no longer has the
method keeps its own behaviour (``apply`` then reports False and the processors log it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("escalate.processors")

_MARK = "_escalate_retries_lost_connections"


def apply() -> bool:
    """Make the producer's coordinator lookup retry lost connections. True once applied."""
    try:
        from aiokafka.producer.sender import Sender
    except ImportError:  # pragma: no cover - aiokafka is a dependency of faust
        return False
    original = getattr(Sender, "_find_coordinator", None)
    if original is None:
        return False
    if getattr(original, _MARK, False):
        return True

    async def _find_coordinator(self: Any, coordinator_type: Any, coordinator_key: str) -> Any:
        while True:
            try:
                return await original(self, coordinator_type, coordinator_key)
            except Exception as exc:
                if not retriable_cause(exc):
                    raise
                log.warning(
                    "coordinator lookup lost its connection (%s); asking another broker",
                    type(exc.__cause__).__name__,
                )
                await self.client.force_metadata_update()
                await asyncio.sleep(self._retry_backoff)

    setattr(_find_coordinator, _MARK, True)
    _find_coordinator.original = original  # type: ignore[attr-defined]
    Sender._find_coordinator = _find_coordinator
    return True


def retriable_cause(exc: BaseException) -> bool:
    """The sender wraps the lookup's error in a plain KafkaError; retry if the cause is
    retriable (a lost connection is), never an authorisation failure or a fencing."""
    from aiokafka import errors

    cause = exc.__cause__
    return (
        isinstance(exc, errors.KafkaError)
        and isinstance(cause, errors.KafkaError)
        and bool(getattr(cause, "retriable", False))
    )
