"""The Kafka broker the integration tests talk to.

Tests get their own broker on a dedicated port pair (19092/19093 unless overridden), so a
developer's broker on 9092 is never touched or wiped. The jar cache under ``kafka_home`` is
shared with it. A broker started here gets a fresh data directory and is stopped when the
test process exits; a broker that was already answering on the test port is reused as it is.

Tests of broker loss get a cluster of their own instead (:func:`cluster_for_tests`, the
``kafka_cluster`` fixture): three nodes on ports 18092-18097 unless
ESCALATE_TEST_KAFKA_CLUSTER_PORT moves them, data under the pytest tmp dir, always fresh.
Those ports must lie outside the kernel's ephemeral range: while a killed node is down, any
client socket on the machine may be given its port, and the node then cannot come back.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from escalate import kafka_local
from escalate.settings import Settings
from schemas.reports import ReportSubmitted

TEST_KAFKA_PORT = int(os.environ.get("ESCALATE_TEST_KAFKA_PORT", "19092"))
TEST_CONTROLLER_PORT = int(
    os.environ.get("ESCALATE_TEST_KAFKA_CONTROLLER_PORT", str(TEST_KAFKA_PORT + 1))
)

_atexit_registered = False


def broker_settings_for_tests() -> Settings:
    """Settings for the test broker: the usual kafka_home, the test ports."""
    return Settings(
        kafka_bootstrap_servers=None,
        kafka_port=TEST_KAFKA_PORT,
        kafka_controller_port=TEST_CONTROLLER_PORT,
    )


def broker_for_tests(timeout_s: float = 180) -> str:
    """Bootstrap address of a running broker, starting the local test broker when needed."""
    global _atexit_registered
    external = os.environ.get("ESCALATE_KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        return external
    settings = broker_settings_for_tests()
    if kafka_local.broker_answers(kafka_local.bootstrap_address(settings)):
        return kafka_local.bootstrap_address(settings)
    bootstrap = kafka_local.start(settings, timeout_s=timeout_s, fresh=True)
    if not _atexit_registered:
        # Backstop for crashed or interrupted sessions; the fixture's own teardown comes first.
        atexit.register(stop_test_broker)
        _atexit_registered = True
    return bootstrap


def stop_test_broker() -> None:
    """Stop the broker on the test port if kafka_local started it; no-op otherwise."""
    if os.environ.get("ESCALATE_KAFKA_BOOTSTRAP_SERVERS", "").strip():
        return
    kafka_local.stop(broker_settings_for_tests())


# --- a local multi-broker cluster, for tests of broker loss --------------------------------

TEST_CLUSTER_PORT = int(os.environ.get("ESCALATE_TEST_KAFKA_CLUSTER_PORT", "18092"))
TEST_CLUSTER_CONTROLLER_PORT = int(
    os.environ.get("ESCALATE_TEST_KAFKA_CLUSTER_CONTROLLER_PORT", str(TEST_CLUSTER_PORT + 1))
)
CLUSTER_BROKERS = 3

#: Ports the Kafka tests own; servers other tests start (etcd, the API server, containers)
#: must not take one of them even when it happens to be free at that moment.
RESERVED_PORTS = frozenset(
    {
        TEST_KAFKA_PORT,
        TEST_CONTROLLER_PORT,
        *range(TEST_CLUSTER_PORT, TEST_CLUSTER_PORT + 2 * CLUSTER_BROKERS),
    }
)


def ephemeral_port_range() -> range:
    """The ports the kernel hands out to sockets that did not ask for one."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        low, high = "32768", "60999"  # Linux's default
    return range(int(low), int(high) + 1)


@dataclass
class LocalCluster:
    """A KRaft cluster of ``brokers`` nodes that this test session started and may break.

    Node k listens on the cluster port + 2(k-1) (and the controller port + 2(k-1)); its
    ``node.id`` is k, which is what partition metadata names as leader and replicas.
    """

    settings: Settings
    home: Path
    brokers: int
    bootstrap: str

    def kill(self, node_id: int) -> None:
        """``kill -9`` one node: no controlled shutdown, leaders move only once it is fenced."""
        if not kafka_local.stop_node(self.settings, node_id, hard=True, home=self.home):
            raise kafka_local.KafkaLocalError(f"node {node_id} of {self.bootstrap} is not running")

    def restart(self, timeout_s: float = 120) -> str:
        """Start every node that is down and wait until all are unfenced brokers again."""
        return kafka_local.start(
            self.settings, brokers=self.brokers, home=self.home, timeout_s=timeout_s
        )

    def status(self) -> kafka_local.BrokerStatus:
        return kafka_local.status(self.settings, brokers=self.brokers, home=self.home)

    def stop(self) -> None:
        kafka_local.stop(self.settings, brokers=self.brokers, home=self.home)


def cluster_settings_for_tests() -> Settings:
    """The usual kafka_home (for the jar cache only) and the cluster's own test ports."""
    return Settings(
        kafka_bootstrap_servers=None,
        kafka_port=TEST_CLUSTER_PORT,
        kafka_controller_port=TEST_CLUSTER_CONTROLLER_PORT,
    )


@contextlib.contextmanager
def cluster_for_tests(
    home: Path, brokers: int = CLUSTER_BROKERS, timeout_s: float = 180
) -> Iterator[LocalCluster]:
    """A fresh local cluster whose node directories live under ``home``; stopped on exit.

    Never an external cluster (ESCALATE_KAFKA_BOOTSTRAP_SERVERS is ignored): the tests that
    use this kill brokers. A port already in use fails at once, naming the port and the
    variable that moves the whole block (2 × ``brokers`` ports from the cluster port on).
    """
    settings = cluster_settings_for_tests()
    ports = range(TEST_CLUSTER_PORT, TEST_CLUSTER_PORT + 2 * brokers)
    ephemeral = ephemeral_port_range()
    # A broker killed by the test is started again on its old port. Inside the ephemeral range
    # that port can meanwhile belong to any client's connection, and the restart fails with
    # "Address already in use" (seen in CI with 39092).
    if any(port in ephemeral for port in ports):
        raise kafka_local.KafkaLocalError(
            f"the test cluster's ports {ports.start}-{ports.stop - 1} overlap the kernel's "
            f"ephemeral range {ephemeral.start}-{ephemeral.stop - 1}; pick others with "
            "ESCALATE_TEST_KAFKA_CLUSTER_PORT"
        )
    try:
        bootstrap = kafka_local.start(
            settings, brokers=brokers, home=home, fresh=True, timeout_s=timeout_s
        )
    except kafka_local.KafkaLocalError as exc:
        raise kafka_local.KafkaLocalError(
            f"{exc}\n(the test cluster uses ports {TEST_CLUSTER_PORT}-"
            f"{TEST_CLUSTER_PORT + 2 * brokers - 1}; move them with "
            "ESCALATE_TEST_KAFKA_CLUSTER_PORT)"
        ) from exc
    cluster = LocalCluster(settings, home, brokers, bootstrap)
    # Backstop for an interrupted session: no JVM of ours outlives the test process.
    atexit.register(cluster.stop)
    try:
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)


@pytest.fixture(name="kafka_cluster", scope="module")
def kafka_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-broker cluster of the module's own, under the pytest tmp dir.

    Use it by importing ``kafka_cluster_fixture`` into the test module and asking for
    ``kafka_cluster``.
    """
    with cluster_for_tests(tmp_path_factory.mktemp("kafka-cluster")) as cluster:
        yield cluster


def stored_reports(bootstrap: str, topic: str) -> dict[str, int]:
    """report_id → partition of every record in ``topic``, read back from the brokers."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        enable_auto_commit=False,
        isolation_level="read_committed",
        consumer_timeout_ms=5000,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        found: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"{topic} not read to its end {ends}"
            for records in consumer.poll(timeout_ms=2000).values():
                for record in records:
                    found[ReportSubmitted.model_validate_json(record.value).report_id] = (
                        record.partition
                    )
        return found
    finally:
        consumer.close()
