"""A transactional kafka-python producer whose transaction calls give up in time.

kafka-python 3.0 waits for ``send_offsets_to_transaction``, ``commit_transaction`` and
``abort_transaction`` without a deadline. When the transaction coordinator's broker dies
while such a request is in flight, the client can lose the request: the call then never
returns, and the worker that made it sits on its partitions for good (seen with a broker
killed during a burst on a three-broker cluster). The Java client bounds the same calls by
``max.block.ms`` and throws a timeout; this subclass does the same with kafka-python's
``max_block_ms``. A ``KafkaTimeoutError`` is a ``KafkaError``, so the state worker treats it
like any other broker failure: it drops its producers, and the next producer for the
partition fences this one and aborts whatever it left open.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError


class TransactionalProducer(KafkaProducer):  # type: ignore[misc]
    """``KafkaProducer`` with transaction calls bounded by ``max_block_ms``."""

    def send_offsets_to_transaction(self, offsets: Any, group_metadata: Any) -> None:
        self._finish(
            self._manager().send_offsets_to_transaction(offsets, group_metadata),
            "adding the consumed offsets to the transaction",
        )

    def commit_transaction(self) -> None:
        self._finish(self._manager().begin_commit(), "committing the transaction")

    def abort_transaction(self) -> None:
        self._finish(self._manager().begin_abort(), "aborting the transaction")

    def close(self, timeout: float | None = None, null_logger: bool = False) -> None:
        """Close, and when the flush gives up, stop the sender anyway.

        kafka-python's ``close`` flushes first and lets the flush's ``KafkaTimeoutError``
        escape, leaving the sender thread running: a worker dropping the producer of a
        partition whose broker died then crashed on the close itself (seen on the
        three-broker cluster). What is unsent belongs to a transaction that the next owner of
        the transactional id aborts, so it is given up.
        """
        try:
            super().close(timeout=timeout, null_logger=null_logger)
        except KafkaTimeoutError:
            if self._sender is not None and self._sender.is_alive():
                self._sender.force_close()
            self._closed = True

    def _manager(self) -> Any:
        # The same guard as the methods this class replaces.
        if not self._transaction_manager:
            from kafka.errors import IllegalStateError

            raise IllegalStateError("transactional calls need a transactional_id")
        return self._transaction_manager

    def _finish(self, result: Any, what: str) -> None:
        self._sender.wakeup()
        limit_ms = self.config["max_block_ms"]
        if not result.wait(timeout_ms=limit_ms):  # raises the request's own error if it failed
            raise KafkaTimeoutError(f"{what} not answered within {limit_ms} ms")
