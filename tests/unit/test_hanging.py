"""Which transactions open on a group's offsets partition are hanging (escalate/hanging.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from escalate.hanging import OpenTransaction, hanging, java_string_hash, offsets_partition


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("hello", 99162322),  # Java: "hello".hashCode()
        ("polygenelubricants", -2147483648),  # the well-known Integer.MIN_VALUE hash
        ("😀", 1772899),  # two UTF-16 code units, as Java hashes them: 31 × 0xD83D + 0xDE00
    ],
)
def test_java_string_hash(text: str, expected: int) -> None:
    assert java_string_hash(text) == expected


def test_offsets_partition_takes_the_absolute_hash_like_the_broker() -> None:
    # Kafka's Utils.abs: Integer.MIN_VALUE (whose Java abs overflows) becomes 0.
    assert offsets_partition("polygenelubricants", 50) == 0
    assert offsets_partition("hello", 50) == 99162322 % 50
    # A negative hash: its absolute value, not the sign bit cleared (Java: -862545276).
    assert java_string_hash("Hello World") == -862545276
    assert offsets_partition("Hello World", 50) == 862545276 % 50
    assert all(0 <= offsets_partition(f"group-{n}", 7) < 7 for n in range(100))


def txn(producer_id: int, last_write_ms: int) -> OpenTransaction:
    return OpenTransaction(3, producer_id, 1, -1, last_write_ms)


def test_only_a_long_silent_transaction_its_coordinator_does_not_run_is_hanging() -> None:
    now = 1_000_000
    old, recent, live = txn(1, now - 61_000), txn(2, now - 5_000), txn(3, now - 600_000)
    assert hanging([old, recent, live], active_producer_ids={3}, now_ms=now) == [old]
    assert hanging([old], active_producer_ids=set(), now_ms=now, open_longer_than_s=120) == []
    assert hanging([], active_producer_ids=set(), now_ms=now) == []


def test_the_groups_surveyed_are_the_ones_the_components_use(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from escalate.components import consumer_groups
    from escalate.settings import DEFAULT_CONFIG_DIR
    from stream_processors.app import ProcessorConfig, create_app
    from stream_processors.config_holder import ConfigHolder
    from stream_processors.escalation.worker import Escalator, EscalatorConfig
    from stream_processors.grouping.worker import Grouper, GrouperConfig

    holder = ConfigHolder(DEFAULT_CONFIG_DIR / "policy.yaml", DEFAULT_CONFIG_DIR / "directory.yaml")
    app = create_app(
        ProcessorConfig(app_id="city", data_dir=str(tmp_path)),
        "127.0.0.1:1",
        holder,
        CollectorRegistry(),
    )
    grouper = Grouper(GrouperConfig(app_id="city"), holder, registry=CollectorRegistry())
    escalator = Escalator(EscalatorConfig(app_id="city"), holder, registry=CollectorRegistry())
    assert consumer_groups("city") == [
        app.conf.id,
        grouper.options.group_id,
        escalator.options.group_id,
    ]
