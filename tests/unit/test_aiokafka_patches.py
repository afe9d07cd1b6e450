"""The producer's coordinator lookup survives a broker that dies mid-request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import errors
from aiokafka.client import CoordinationType
from aiokafka.producer.sender import Sender

from stream_processors import aiokafka_patches


class FlakyClient:
    """Answers FindCoordinator only after ``failures`` lost connections."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.lookups = 0
        self.refreshes = 0

    async def coordinator_lookup(self, coordinator_type: Any, key: str) -> int:
        self.lookups += 1
        if self.failures:
            raise self.failures.pop(0)
        return 2

    async def ready(self, node_id: int, group: Any = None) -> bool:
        return True

    async def force_metadata_update(self) -> bool:
        self.refreshes += 1
        return True


class Stub:
    """The parts of aiokafka's Sender that ``_find_coordinator`` touches."""

    def __init__(self, client: FlakyClient) -> None:
        self.client = client
        self._txn_manager = object()
        self._retry_backoff = 0.0
        self._coordinators: dict[Any, int] = {}


def lookup(stub: Stub, find: Any) -> int:
    return asyncio.run(find(stub, CoordinationType.GROUP, "escalate-processors"))


def lost() -> Exception:
    return errors.KafkaConnectionError("Connection at 127.0.0.1:39092 closed")


def test_unpatched_aiokafka_gives_up_on_a_lost_connection() -> None:
    # The bug this module exists for; when aiokafka fixes it, this fails and the patch can go.
    current = Sender.__dict__["_find_coordinator"]
    original = getattr(current, "original", current)
    with pytest.raises(errors.KafkaError, match="KafkaConnectionError"):
        lookup(Stub(FlakyClient([lost()])), original)


def test_patched_lookup_retries_lost_connections_then_finds_the_coordinator() -> None:
    assert aiokafka_patches.apply()
    assert aiokafka_patches.apply()  # twice is once
    client = FlakyClient([lost(), lost()])
    stub = Stub(client)
    assert lookup(stub, Sender._find_coordinator) == 2
    assert client.lookups == 3
    assert client.refreshes >= 2
    assert stub._coordinators[CoordinationType.GROUP] == 2


def test_patched_lookup_still_fails_on_what_retrying_cannot_fix() -> None:
    assert aiokafka_patches.apply()
    denied = errors.GroupAuthorizationFailedError()
    client = FlakyClient([denied])
    with pytest.raises(errors.GroupAuthorizationFailedError):
        lookup(Stub(client), Sender._find_coordinator)
    assert client.lookups == 1
