"""One set of metrics per Prometheus registry.

prometheus_client refuses to register a metric name twice in one registry, so a second worker
in the same process (tests, or a supervisor restarting a thread) must reuse the first one's.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry

T = TypeVar("T")


class PerRegistry(Generic[T]):
    def __init__(self, factory: Callable[[CollectorRegistry], T]) -> None:
        self._factory = factory
        self._made: weakref.WeakKeyDictionary[CollectorRegistry, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, registry: CollectorRegistry) -> T:
        with self._lock:
            made = self._made.get(registry)
            if made is None:
                made = self._made[registry] = self._factory(registry)
            return made
