"""`escalate kafka start|status|stop` as an operator uses it, on a broker of its own."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from kafka import KafkaConsumer

from escalate import kafka_local
from escalate.settings import Settings
from tests.conftest import escalate, free_port


def test_start_is_idempotent_prints_the_address_last_and_stop_stops(tmp_path: Path) -> None:
    port, controller = free_port(), free_port()
    env = {
        **os.environ,
        "ESCALATE_KAFKA_PORT": str(port),
        "ESCALATE_KAFKA_CONTROLLER_PORT": str(controller),
    }
    env.pop("ESCALATE_KAFKA_BOOTSTRAP_SERVERS", None)
    first = escalate(env, "kafka", "start")
    try:
        assert first.returncode == 0, first.stderr
        address = first.stdout.strip().splitlines()[-1]
        assert address == f"127.0.0.1:{port}"
        consumer = KafkaConsumer(bootstrap_servers=address)
        assert isinstance(consumer.topics(), set)
        consumer.close()

        status = escalate(env, "kafka", "status")
        assert status.returncode == 0 and "running" in status.stdout
        pid = status.stdout.split("pid ")[1].split(")")[0]

        again = escalate(env, "kafka", "start")
        assert again.returncode == 0
        assert again.stdout.strip().splitlines()[-1] == address
        assert pid in escalate(env, "kafka", "status").stdout, "a second broker was started"
    finally:
        stopped = escalate(env, "kafka", "stop")
    assert stopped.returncode == 0
    assert escalate(env, "kafka", "status").returncode == 3
    shutil.rmtree(kafka_local.data_dir(Settings(kafka_port=port)), ignore_errors=True)


def test_cluster_start_names_the_port_in_use_and_leaves_nothing_behind() -> None:
    """A taken port is named (with the node it belongs to) before any JVM or file is made."""
    port, controller = free_port(), free_port()
    env = {
        **os.environ,
        "ESCALATE_KAFKA_PORT": str(port),
        "ESCALATE_KAFKA_CONTROLLER_PORT": str(controller),
    }
    env.pop("ESCALATE_KAFKA_BOOTSTRAP_SERVERS", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        started = escalate(env, "kafka", "start", "--brokers", "3")
    assert started.returncode == 1
    assert f"port {port} (the client port of node 1) is already in use" in started.stderr
    assert not kafka_local.cluster_dir(Settings(kafka_port=port)).exists()
    assert escalate(env, "kafka", "status", "--brokers", "3").returncode == 3


def test_cluster_ports_that_would_collide_are_refused() -> None:
    env = {**os.environ, "ESCALATE_KAFKA_PORT": "39196", "ESCALATE_KAFKA_CONTROLLER_PORT": "39198"}
    env.pop("ESCALATE_KAFKA_BOOTSTRAP_SERVERS", None)
    started = escalate(env, "kafka", "start", "--brokers", "3")
    assert started.returncode == 1
    assert "port 39198 would be both the controller port of node 1 and the client port" in (
        started.stderr
    )
    killed = escalate(env, "kafka", "stop", "--kill")
    assert killed.returncode == 2 and "--kill needs --node" in killed.stderr
