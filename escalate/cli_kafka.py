"""``escalate kafka start|stop|status``: drive the local broker from a shell.

The main CLI mounts these with :func:`add_kafka_commands`; ``python -m escalate.cli_kafka``
offers the same commands on their own. ``start`` keeps stdout to the bootstrap address (its
last line) so scripts can do ``export ESCALATE_KAFKA_BOOTSTRAP_SERVERS=$(escalate kafka start)``;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from escalate import kafka_local
from escalate.settings import Settings

SettingsFactory = Callable[[], Settings]
DESCRIPTION = "Start, stop or inspect the local Kafka broker (jars fetched by Maven)."


def _progress(message: str) -> None:
    """Progress lines for humans, on stderr so stdout stays machine-readable."""
    print(f"kafka: {message}", file=sys.stderr, flush=True)


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
        help="run the local single-node Kafka broker",
        description=DESCRIPTION,
    )
    _add_actions(kafka, settings_factory)
    return kafka


def _add_actions(parser: argparse.ArgumentParser, settings_factory: SettingsFactory) -> None:
    """Add start/stop/status below ``parser`` (the ``kafka`` group, or the standalone root)."""
    ports = argparse.ArgumentParser(add_help=False)
    ports.add_argument("--port", type=int, help="client port (default: ESCALATE_KAFKA_PORT)")
    ports.add_argument(
        "--controller-port",
        type=int,
        help="KRaft controller port (default: ESCALATE_KAFKA_CONTROLLER_PORT)",
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

    def run_start(args: argparse.Namespace) -> int:
        settings = _settings(args, settings_factory)
        try:
            bootstrap = kafka_local.start(
                settings, timeout_s=args.timeout, fresh=args.fresh, progress=_progress
            )
        except kafka_local.KafkaLocalError as exc:
            print(f"kafka: {exc}", file=sys.stderr)
            return 1
        print(bootstrap, flush=True)
        return 0

    start.set_defaults(func=run_start)

    stop = actions.add_parser("stop", parents=[ports], help="stop the broker started here")
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds before SIGKILL (30)")

    def run_stop(args: argparse.Namespace) -> int:
        settings = _settings(args, settings_factory)
        if not kafka_local.stop(settings, timeout_s=args.timeout, progress=_progress):
            _progress(f"no broker of ours runs on {kafka_local.bootstrap_address(settings)}")
        return 0

    stop.set_defaults(func=run_stop)

    status = actions.add_parser("status", parents=[ports], help="show whether it runs")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    def run_status(args: argparse.Namespace) -> int:
        info = kafka_local.status(_settings(args, settings_factory))
        if args.json:
            print(json.dumps(info))
        else:
            state = "running" if info["running"] else "not running"
            pid = f" (pid {info['pid']})" if info["pid"] is not None else ""
            print(f"{state}{pid} on {info['bootstrap']}; log: {info['log_file']}")
        return 0 if info["running"] else 3  # 3, like `systemctl status` for "not running"

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
