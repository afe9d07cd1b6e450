"""The ``escalate`` command: one entry point for operators, developers and the processes."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from escalate.components import COMPONENTS
from escalate.settings import Settings
from schemas.common import Tier

log = logging.getLogger("escalate")


def _settings() -> Settings:
    from pydantic import ValidationError

    from schemas.yaml_loader import ConfigError

    try:
        return Settings()
    except ValidationError as exc:
        problems = "\n".join(
            f"  ESCALATE_{'_'.join(map(str, e['loc'])).upper() or '*'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(f"environment settings:\n{problems}") from None


def _load_policy(settings: Settings):  # type: ignore[no-untyped-def]
    from schemas.policy import Policy
    from schemas.yaml_loader import load_yaml_model

    return load_yaml_model(settings.policy_file, Policy)


def cmd_up(args: argparse.Namespace) -> int:
    from escalate.up import up

    return up(_settings())


# One-shot jobs a container image runs with the same entry point as the components
# (`escalate run migrate` before the workers start, `escalate run topics` once per cluster).
JOBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "migrate": lambda args: cmd_db_migrate(args),
    "topics": lambda args: cmd_topics_create(args),
}


def _component_marker(settings: Settings) -> Path:
    return settings.var_dir / "component"


def cmd_run(args: argparse.Namespace) -> int:
    from escalate.components import RUNNERS

    if args.component in JOBS:
        return JOBS[args.component](args)
    settings = _settings()
    # For `escalate health` without an argument (the image's HEALTHCHECK): which component to
    # probe. Containers sharing the host's network see each other's ports, so "any component
    # answers" would call a container healthy whose own component never started.
    marker = _component_marker(settings)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(args.component + "\n", "utf-8")
    except OSError as exc:
        log.warning("could not note the component for `escalate health`: %s", exc)
    return RUNNERS[args.component](settings)


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when a component answers on this host: the intake's /healthz, or a worker's
    metrics endpoint. A container's HEALTHCHECK; Kubernetes probes the ports directly."""
    import urllib.error
    import urllib.request

    from escalate.components import COMPONENTS, METRICS_OFFSET

    settings = _settings()
    marker = _component_marker(settings)
    ran = marker.read_text("utf-8").strip() if marker.is_file() else ""
    if args.component:
        wanted = [args.component]
    elif ran in COMPONENTS:
        wanted = [ran]  # the component `escalate run` started in this container
    else:
        wanted = list(COMPONENTS)
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host
    for component in wanted:
        if component == "intake":
            url = f"http://{host}:{settings.http_port}/healthz"
        else:
            url = f"http://{host}:{settings.metrics_port + METRICS_OFFSET[component]}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as answer:
                if answer.status == 200:
                    print(f"{component}: healthy ({url})")
                    return 0
        except (urllib.error.URLError, OSError):
            continue
    print(f"no component answered: {', '.join(wanted)}", file=sys.stderr)
    return 1


def _training_installed() -> bool:
    """scikit-learn trains the model and compares it; the pipeline itself needs numpy alone, so
    the image leaves it out (the ``train`` extra)."""
    import importlib.util

    if importlib.util.find_spec("sklearn") is not None:
        return True
    print(
        "training and comparing need scikit-learn: pip install 'incident-escalation[train]'",
        file=sys.stderr,
    )
    return False


def cmd_classify(args: argparse.Namespace) -> int:
    from stream_processors.classification.batch import classify_stream, evaluate_file

    policy = _load_policy(_settings())
    if (args.file == "train" or (args.evaluate and args.model)) and not _training_installed():
        return 2
    if args.file == "train":
        from stream_processors.classification.training import DEFAULT_MODEL, train_command

        out = Path(args.out) if args.out else DEFAULT_MODEL
        extra = [Path(p) for p in args.extra]
        return train_command(extra, out, args.seed, args.cv, policy, sys.stdout)
    if args.extra:
        print("extra files are only for `escalate classify train`", file=sys.stderr)
        return 2
    if args.evaluate and args.model:
        from stream_processors.classification.training import compare_file

        return compare_file(Path(args.evaluate), Path(args.model), policy, sys.stdout)
    if args.evaluate:
        return evaluate_file(Path(args.evaluate), policy, sys.stdout)
    if args.file and args.file != "-":
        with open(args.file, encoding="utf-8") as fh:
            return classify_stream(fh, policy, sys.stdout)
    return classify_stream(sys.stdin, policy, sys.stdout)


def cmd_policy_check(args: argparse.Namespace) -> int:
    from stream_processors.classification.policy_tools import check_files

    settings = _settings()
    paths = [Path(p) for p in args.files] or [settings.policy_file, settings.directory_file]
    problems = check_files(paths)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        for path in paths:
            print(f"{path}: ok")
    return 1 if problems else 0


def cmd_policy_show(args: argparse.Namespace) -> int:
    from stream_processors.classification.policy_tools import show_policy

    sys.stdout.write(show_policy(_load_policy(_settings())))
    return 0


def cmd_policy_reload(args: argparse.Namespace) -> int:
    from escalate.reload import request_reload

    return request_reload(_settings())


def cmd_audit_timeline(args: argparse.Namespace) -> int:
    from consumers.audit.store import timeline_command

    return timeline_command(_settings(), args.id, sys.stdout)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from consumers.audit.store import verify_command

    return verify_command(_settings(), args.id, sys.stdout)


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from consumers.audit.store import migrate

    settings = _settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)
    print("audit database at the latest schema")
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    from escalate.components import require_bootstrap
    from escalate.topics_admin import ensure_topics, layout_of

    settings = _settings()
    created = ensure_topics(require_bootstrap(settings), settings.topic_prefix, layout_of(settings))
    print("\n".join(created) if created else "all topics exist")
    return 0


def cmd_topics_manifest(args: argparse.Namespace) -> int:
    from escalate.topics_admin import TopicLayout, layout_of, topic_manifests_yaml

    settings = _settings()
    default = layout_of(settings)
    layout = TopicLayout(
        partitions=args.partitions if args.partitions is not None else default.partitions,
        replication=args.replicas if args.replicas is not None else default.replication,
        min_insync_replicas=(
            args.min_insync if args.min_insync is not None else default.min_insync_replicas
        ),
    )
    prefix = args.prefix if args.prefix is not None else settings.topic_prefix
    try:
        text = topic_manifests_yaml(layout, prefix, args.cluster)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def cmd_hanging(args: argparse.Namespace) -> int:
    """List the transactions open on the pipeline groups' offsets partitions; --abort ends
    the hanging ones (what each stage's liveness check does on its own after 30 s stalled)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from escalate.components import consumer_groups, require_bootstrap
    from escalate.hanging import abort, survey

    settings = _settings()
    bootstrap = require_bootstrap(settings)
    groups = consumer_groups(settings.app_id)
    if not args.verbose:  # each failed connection attempt is logged; the outcome is said below
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id=f"{settings.app_id}-hanging",
            request_timeout_ms=10_000,
            bootstrap_timeout_ms=10_000,
        )
    except KafkaError as exc:
        print(f"cannot reach Kafka at {bootstrap}: {exc}", file=sys.stderr)
        return 2
    try:
        now_ms = int(time.time() * 1000)
        findings = survey(admin, groups, now_ms, args.open_longer_than)
        for finding in findings:
            print(finding.describe(now_ms))
        if not findings:
            print(f"no transaction open where {', '.join(groups)} keep their offsets")
        stuck = [f.txn for f in findings if f.hanging]
        if stuck and args.abort:
            abort(admin, stuck)
            print(f"aborted {len(stuck)} hanging transaction(s)")
            return 0
        return 1 if stuck else 0
    except KafkaError as exc:
        print(f"Kafka at {bootstrap} did not answer: {exc}", file=sys.stderr)
        return 2
    finally:
        admin.close()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive count")
    return value


def cmd_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from producers.bulk_import import FileError, format_of, import_lines, read_lines, unreachable

    settings = _settings()
    url = args.url or f"http://{settings.http_host}:{settings.http_port}"
    from producers.intake.keys import is_hashed

    # A hashed entry (sha256:...) cannot be sent: only the intake's own plain keys can.
    key = args.api_key or next((k for k in settings.api_keys if not is_hashed(k)), "")
    if not key:
        print(
            "no API key: pass --api-key (the configured keys, if any, are stored hashed)",
            file=sys.stderr,
        )
        return 2
    fmt = format_of(args.file, args.format)
    problem = unreachable(url)
    if problem:
        print(f"{problem}; nothing imported", file=sys.stderr)
        return 2

    def run(stream: TextIO, total: int | None) -> int:
        # The bar goes to stderr and only to a terminal; stdout carries one outcome per line.
        with tqdm(total=total, unit="report", file=sys.stderr, disable=None) as bar:
            try:
                summary = import_lines(
                    read_lines(stream, fmt), url, key, sys.stdout, bar, args.workers
                )
            except FileError as exc:
                print(f"{args.file}: {exc}", file=sys.stderr)
                return 2
        print(summary.text(), file=sys.stderr)
        return 1 if summary.refused else 0

    if args.file == "-":
        return run(sys.stdin, None)
    try:
        # utf-8-sig: spreadsheets save CSV with a byte-order mark
        with open(args.file, encoding="utf-8-sig", newline="") as fh:
            total = sum(1 for text in fh if text.strip()) - (1 if fmt == "csv" else 0)
            fh.seek(0)
            return run(fh, total)
    except UnicodeDecodeError as exc:
        print(f"{args.file}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{args.file}: {exc.strerror}", file=sys.stderr)
        return 2


def cmd_review_export(args: argparse.Namespace) -> int:
    from escalate.components import require_bootstrap
    from stream_processors.escalation.review_export import read_states, write_corpus

    settings = _settings()
    states, unreadable = read_states(require_bootstrap(settings), settings.topic_prefix)
    if unreadable:
        print(f"{unreadable} unreadable state record(s) skipped", file=sys.stderr)
    if args.file == "-":
        count = write_corpus(states, sys.stdout)
    else:
        with open(args.file, "w", encoding="utf-8") as fh:
            count = write_corpus(states, fh)
        print(f"wrote {count} reviewed report(s) to {args.file}")
    return 0


def cmd_schemas_export(args: argparse.Namespace) -> int:
    from schemas.export import export_json_schemas

    written = export_json_schemas(Path(args.out))
    print(f"wrote {len(written)} JSON Schema files to {args.out}")
    return 0


def cmd_key_new(args: argparse.Namespace) -> int:
    from producers.intake.keys import hashed, new_key

    key = new_key()
    entry = f"{args.name}={args.tier + ':' if args.tier else ''}{hashed(key)}"
    variable = "ESCALATE_AUTHORITY_API_KEYS" if args.tier else "ESCALATE_INTAKE_API_KEYS"
    print(f"key for {args.name} (give it to them once; it is not stored anywhere): {key}")
    print(f"entry for {variable}: {entry}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="escalate",
        description="Online-safety incident escalation pipeline. Settings: ESCALATE_* variables.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    add("up", cmd_up, "run the whole pipeline (starts a local broker when none is configured)")
    run = add("run", cmd_run, "run one component in the foreground")
    run.add_argument("component", choices=[*COMPONENTS, *JOBS])
    health = add("health", cmd_health, "exit 0 when a component on this host answers its probe")
    health.add_argument("component", nargs="?", choices=list(COMPONENTS))
    health.add_argument("--timeout", type=float, default=3.0, help="seconds per probe")

    classify = add(
        "classify",
        cmd_classify,
        "classify JSON-lines reports from FILE or stdin; `classify train` builds the model",
    )
    classify.add_argument("file", nargs="?", help="JSON lines; '-' or nothing for stdin")
    classify.add_argument("--evaluate", metavar="FILE", help="evaluate on a labelled corpus")
    # `classify train [EXTRA.jsonl ...]` shares this parser: the positional "file" is then the
    # word "train" and the extra labelled files (reviewed exports) follow it.
    classify.add_argument(
        "extra", nargs="*", help="with `train`: extra labelled JSON-lines files to train on"
    )
    classify.add_argument(
        "--model", metavar="PATH", help="with --evaluate: rules, model and both side by side"
    )
    classify.add_argument("--out", metavar="PATH", help="train: model file to write")
    classify.add_argument("--seed", type=int, default=0, help="train: random seed (default 0)")
    classify.add_argument(
        "--cv", action="store_true", help="train: print 5-fold cross-validated figures first"
    )

    policy = sub.add_parser("policy", help="check, show or reload the policy")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser("check", help="validate policy, rules and directory files")
    check.add_argument("files", nargs="*", help="files to check (default: the configured ones)")
    check.set_defaults(func=cmd_policy_check)
    psub.add_parser("show", help="print the effective policy as YAML").set_defaults(
        func=cmd_policy_show
    )
    psub.add_parser("reload", help="make the running pipeline load the policy now").set_defaults(
        func=cmd_policy_reload
    )

    audit = sub.add_parser("audit", help="read the audit trail")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    tl = asub.add_parser("timeline", help="an incident's events as JSON lines, in order")
    tl.add_argument("id", help="report id, tracking code or incident id")
    tl.set_defaults(func=cmd_audit_timeline)
    ver = asub.add_parser("verify", help="check the hash chains (one incident, or all)")
    ver.add_argument("id", nargs="?", help="report id, tracking code or incident id")
    ver.set_defaults(func=cmd_audit_verify)

    db = sub.add_parser("db", help="audit database maintenance")
    dsub = db.add_subparsers(dest="db_command", required=True)
    dsub.add_parser("migrate", help="upgrade the schema to the latest version").set_defaults(
        func=cmd_db_migrate
    )

    topics = sub.add_parser("topics", help="Kafka topics")
    tsub = topics.add_subparsers(dest="topics_command", required=True)
    tsub.add_parser("create", help="create missing topics").set_defaults(func=cmd_topics_create)
    manifest = tsub.add_parser(
        "manifest",
        help="print the topics as Strimzi KafkaTopic YAML (defaults: ESCALATE_TOPIC_* settings)",
    )
    manifest.add_argument("--partitions", type=_positive, metavar="N", help="partitions per topic")
    manifest.add_argument("--replicas", type=_positive, metavar="N", help="replicas per partition")
    manifest.add_argument("--min-insync", type=_positive, metavar="N", help="min.insync.replicas")
    manifest.add_argument("--cluster", default="escalate", help="the Kafka resource's name")
    manifest.add_argument("--prefix", help="topic name prefix (default ESCALATE_TOPIC_PREFIX)")
    manifest.set_defaults(func=cmd_topics_manifest)

    import_help = "import reports from a CSV or JSON-lines file through the intake API"
    imp = sub.add_parser("import", aliases=["send"], help=import_help, description=import_help)
    imp.set_defaults(func=cmd_import)
    imp.add_argument(
        "file",
        help="FILE.csv (header row of report fields) or FILE.jsonl (one report, or "
        "{'report': ...}, per line); '-' = JSON lines on stdin",
    )
    imp.add_argument("--format", choices=["csv", "jsonl"], help="default: from the file name")
    imp.add_argument("--url", help="intake base URL (default from ESCALATE_HTTP_HOST/PORT)")
    imp.add_argument("--api-key", help="X-API-Key to use (default: first configured key)")
    imp.add_argument("--workers", type=int, default=4, help="requests in flight (default 4)")

    review = sub.add_parser("review", help="human triage of the classifier's decisions")
    rsub = review.add_subparsers(dest="review_command", required=True)
    rexp = rsub.add_parser(
        "export",
        help="write reviewed reports as a labelled corpus for `escalate classify --evaluate`",
    )
    rexp.add_argument("file", help="JSON-lines file to write; '-' for stdout")
    rexp.set_defaults(func=cmd_review_export)

    schemas = sub.add_parser("schemas", help="event contracts")
    ssub = schemas.add_subparsers(dest="schemas_command", required=True)
    exp = ssub.add_parser("export", help="write JSON Schema files")
    exp.add_argument("--out", default="schemas/json")
    exp.set_defaults(func=cmd_schemas_export)

    key = sub.add_parser("key", help="API keys for intake clients and authority systems")
    ksub = key.add_subparsers(dest="key_command", required=True)
    knew = ksub.add_parser(
        "new",
        help="a new random key, and its hashed entry for the configuration",
        description="Prints a new key (for the client) and the entry that lets it in, with "
        "only the key's SHA-256 in the configuration.",
    )
    knew.add_argument("name", help="the client's name, recorded with what it sends")
    knew.add_argument(
        "--tier",
        choices=[t.value for t in Tier],
        help="an authority system's key, acting for this tier (ESCALATE_AUTHORITY_API_KEYS)",
    )
    knew.set_defaults(func=cmd_key_new)

    hang = add(
        "hanging",
        cmd_hanging,
        "list transactions open where the pipeline's consumer groups keep their offsets; "
        "exit 1 while one hangs (--abort ends those)",
    )
    hang.add_argument("--abort", action="store_true", help="abort the hanging transactions")
    hang.add_argument(
        "--open-longer-than",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="silent for longer than this, and unknown to its coordinator: hanging (default 60)",
    )

    try:
        from escalate.cli_kafka import add_kafka_commands

        add_kafka_commands(sub, _settings)
    except ImportError:  # pragma: no cover - only while the module is being written
        pass
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # The Kafka clients warn about every transient coordinator move while groups form;
        # real failures still surface as errors.
        for noisy in ("kafka", "aiokafka"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    # `kill -USR1 PID` writes every thread's stack to stderr: how an operator (or a test)
    # finds where a process that still runs but does no work is waiting. Code only, no data.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from schemas.yaml_loader import ConfigError

        if isinstance(exc, ConfigError):
            print(f"configuration refused:\n{exc}", file=sys.stderr)
            return 2
        raise
    return result


if __name__ == "__main__":
    sys.exit(main())
