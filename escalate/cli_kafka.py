"""``escalate kafka start|stop|status``: drive the local broker (or cluster) from a shell.

The main CLI mounts these with :func:`add_kafka_commands`; ``python -m escalate.cli_kafka``
offers the same commands on their own. ``start`` keeps stdout to the bootstrap address (its
last line) so scripts can do ``export ESCALATE_KAFKA_BOOTSTRAP_SERVERS=$(escalate kafka start)``;
progress goes to stderr. ``start --brokers 3`` runs a three-node KRaft cluster instead (node k
on the configured ports plus 2(k-1)); ``stop`` and ``status`` find it on their own, and
``stop --node K [--kill]`` takes one node down to try broker loss.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from escalate import kafka_local
from escalate.settings import Settings

SettingsFactory = Callable[[], Settings]
DESCRIPTION = "Start, stop or inspect the local Kafka broker or cluster (jars fetched by Maven)."


def _progress(message: str) -> None:
    """Progress lines for humans, on stderr so stdout stays machine-readable."""
    print(f"kafka: {message}", file=sys.stderr, flush=True)


def _positive(text: str) -> int:
    """argparse type for counts and node numbers."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _settings(args: argparse.Namespace, factory: SettingsFactory) -> Settings:
    """Settings from the environment, with the port flags layered on top."""
    settings = factory()
    update: dict[str, object] = {}
    if args.port is not None:
        update["kafka_port"] = args.port
    if args.controller_port is not None:
        update["kafka_controller_port"] = args.controller_port
    return settings.model_copy(update=update) if update else settings


def add_kafka_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    settings_factory: SettingsFactory,
) -> argparse.ArgumentParser:
    """Register ``kafka start|stop|status`` on an existing ``add_subparsers()`` result.

    Each leaf sets ``func(args) -> int``; settings are built lazily through
    ``settings_factory`` so that ``--help`` works even with a broken environment.
    """
    kafka = subparsers.add_parser(
        "kafka",
        help="run the local Kafka broker (or a local cluster: start --brokers 3)",
        description=DESCRIPTION,
    )
    _add_actions(kafka, settings_factory)
    return kafka


def _add_actions(parser: argparse.ArgumentParser, settings_factory: SettingsFactory) -> None:
    """Add start/stop/status below ``parser`` (the ``kafka`` group, or the standalone root)."""
    ports = argparse.ArgumentParser(add_help=False)
    ports.add_argument(
        "--port", type=int, help="client port, node 1's in a cluster (default: ESCALATE_KAFKA_PORT)"
    )
    ports.add_argument(
        "--controller-port",
        type=int,
        help="KRaft controller port, node 1's in a cluster "
        "(default: ESCALATE_KAFKA_CONTROLLER_PORT)",
    )
    actions = parser.add_subparsers(dest="kafka_command", metavar="{start,stop,status}")
    actions.required = True

    start = actions.add_parser(
        "start", parents=[ports], help="start the broker unless one already answers"
    )
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (120)")
    start.add_argument(
        "--fresh", action="store_true", help="wipe this port's data before launching"
    )
    start.add_argument(
        "--brokers",
        type=_positive,
        default=1,
        help="nodes of a local KRaft cluster, each broker and controller (1); a node that is "
        "down is started again",
    )

    def run_start(args: argparse.Namespace) -> int:
        settings = _settings(args, settings_factory)
        try:
            bootstrap = kafka_local.start(
                settings,
                brokers=args.brokers,
                timeout_s=args.timeout,
                fresh=args.fresh,
                progress=_progress,
            )
        except kafka_local.KafkaLocalError as exc:
            print(f"kafka: {exc}", file=sys.stderr)
            return 1
        print(bootstrap, flush=True)
        return 0

    start.set_defaults(func=run_start)

    stop = actions.add_parser(
        "stop", parents=[ports], help="stop the broker (or every cluster node) started here"
    )
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds before SIGKILL (30)")
    stop.add_argument(
        "--brokers",
        type=_positive,
        help="only the single broker (1) or an N-node cluster (default: whatever runs)",
    )
    stop.add_argument("--node", type=_positive, help="stop only this node of the cluster")
    stop.add_argument(
        "--kill", action="store_true", help="with --node: SIGKILL it, as a crash would"
    )

    def run_stop(args: argparse.Namespace) -> int:
        settings = _settings(args, settings_factory)
        if args.kill and args.node is None:
            print("kafka: --kill needs --node", file=sys.stderr)
            return 2
        if args.node is not None:
            try:
                stopped = kafka_local.stop_node(
                    settings,
                    args.node,
                    hard=args.kill,
                    timeout_s=args.timeout,
                    progress=_progress,
                )
            except kafka_local.KafkaLocalError as exc:
                print(f"kafka: {exc}", file=sys.stderr)
                return 1
            if not stopped:
                port, _ = kafka_local.node_ports(settings, args.node)
                _progress(f"node {args.node} (127.0.0.1:{port}) is not running")
            return 0
        if not kafka_local.stop(
            settings, timeout_s=args.timeout, progress=_progress, brokers=args.brokers
        ):
            _progress(f"no broker of ours runs on {kafka_local.bootstrap_address(settings)}")
        return 0

    stop.set_defaults(func=run_stop)

    status = actions.add_parser("status", parents=[ports], help="show whether it runs")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--brokers",
        type=_positive,
        help="describe the single broker (1) or an N-node cluster (default: what was set up)",
    )

    def run_status(args: argparse.Namespace) -> int:
        try:
            info = kafka_local.status(_settings(args, settings_factory), brokers=args.brokers)
        except kafka_local.KafkaLocalError as exc:
            print(f"kafka: {exc}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(info))
        elif info["brokers"] == 1:
            state = "running" if info["running"] else "not running"
            pid = f" (pid {info['pid']})" if info["pid"] is not None else ""
            print(f"{state}{pid} on {info['bootstrap']}; log: {info['log_file']}")
        else:
            up = sum(node["running"] for node in info["nodes"])
            state = "running" if info["running"] else "not running"
            print(f"{state}: {up} of {info['brokers']} nodes on {info['bootstrap']}")
            for node in info["nodes"]:
                pid = f"pid {node['pid']}" if node["pid"] is not None else "no process"
                print(
                    f"  node {node['node_id']}: {'up' if node['running'] else 'down'} ({pid}) "
                    f"on {node['bootstrap']}, controller {node['controller']}; "
                    f"log: {node['log_file']}"
                )
        # 3, like `systemctl status` for "not running"; a cluster serving clients with a node
        # down still counts as running (the per-node lines say which one).
        return 0 if info["running"] else 3

    status.set_defaults(func=run_status)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m escalate.cli_kafka start|stop|status``."""
    parser = argparse.ArgumentParser(prog="python -m escalate.cli_kafka", description=DESCRIPTION)
    _add_actions(parser, Settings)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
