"""Retrying one delivery: its own small stage, so the notifier's core stays pure.

``deliver_with_retries`` tries an attempt function until it succeeds, fails for good, or the
attempts run out, waiting with exponential backoff in between. It knows nothing of SMTP, Kafka or
metrics; the caller passes an attempt function, a wait function (which a stop event can cut
short) and an observer. ``deliver_with_retries_async`` is the same for coroutine attempts, so
many deliveries can wait out their backoff side by side on one event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from consumers.notifier.sender import SendError, classify


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 300.0

    def delay(self, attempt: int) -> float:
        """The wait after the ``attempt``-th failure (1-based)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2.0 ** (attempt - 1)))

    @property
    def attempts(self) -> int:
        return max(1, self.max_attempts)

    def worst_case_s(self, per_attempt_s: float) -> float:
        return self.attempts * per_attempt_s + sum(self.delay(i) for i in range(1, self.attempts))


class Stopped(Exception):
    """The wait between attempts was cut short by a stop request."""


@dataclass(frozen=True)
class Attempts:
    """How a delivery ended: after ``count`` attempts, with ``error`` None on success."""

    count: int
    error: SendError | None


def deliver_with_retries(
    attempt: Callable[[], None],
    policy: RetryPolicy,
    wait: Callable[[float], bool],
    observe: Callable[[int, SendError | None], None] = lambda n, e: None,
) -> Attempts:
    """Run ``attempt`` until it succeeds or a failure is final.

    ``wait(seconds)`` returns True when it was interrupted by a stop request; then ``Stopped``
    is raised and the caller leaves the work for a later run. A failure is final when it is
    permanent or the last attempt failed.
    """
    n = 0
    while True:
        n += 1
        try:
            attempt()
        except Exception as exc:
            error = classify(exc)
            observe(n, error)
            if not error.transient or n >= policy.attempts:
                return Attempts(n, error)
            if wait(policy.delay(n)):
                raise Stopped from error
            continue
        observe(n, None)
        return Attempts(n, None)


async def deliver_with_retries_async(
    attempt: Callable[[], Awaitable[None]],
    policy: RetryPolicy,
    wait: Callable[[float], Awaitable[bool]],
    observe: Callable[[int, SendError | None], None] = lambda n, e: None,
) -> Attempts:
    """``deliver_with_retries`` for an async ``attempt`` and an async ``wait``.

    Same contract: ``await wait(seconds)`` answers True when a stop request cut it short, and
    then ``Stopped`` is raised. A cancelled attempt is not a failure: the cancellation passes.
    """
    n = 0
    while True:
        n += 1
        try:
            await attempt()
        except Exception as exc:
            error = classify(exc)
            observe(n, error)
            if not error.transient or n >= policy.attempts:
                return Attempts(n, error)
            if await wait(policy.delay(n)):
                raise Stopped from error
            continue
        observe(n, None)
        return Attempts(n, None)
