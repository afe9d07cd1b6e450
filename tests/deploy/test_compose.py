"""deploy/compose/compose.yaml checked without Docker (issue 14), in `make test`.

Two layers. check-jsonschema holds the file against the compose specification's schema: known
keys, types, the few enumerations (depends_on conditions). It takes any string for a restart
policy or a duration, and cannot see one service naming another. The Python checks below cover
what the schema cannot: references between services, health checks where startup order relies
on them, restart policies, the image and its components, the variables and .env.example,
secrets, published ports, files mounted from the repository, and Prometheus scraping what the
stack serves.

Each check is also run on a deliberately broken copy of the file and must refuse it, so a check
that silently stopped looking would fail here. The real `docker compose config` runs in
tests/deploy/server/test_compose_config.py (`make test-deploy`), as it needs a Go build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from escalate.components import COMPONENTS, METRICS_OFFSET
from tests.deploy.compose_support import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO,
    MissingVariable,
    broken_copy,
    interpolate,
    load,
    read_env_file,
    references,
    strings,
)

JOBS = ("topics", "migrate")
IMAGE_DEFAULT = "localhost/incident-escalation:0.1.0"
IMAGE_VAR_DIR = "/var/lib/escalate"  # ESCALATE_VAR_DIR of deploy/image/Containerfile
# The services that may publish a port (on the host's loopback unless the operator says so).
PUBLISHED = {"intake", "grafana", "mailpit"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEYS")
# Placeholders .env.example may hold for a secret: empty, change-me..., or API key entries
# whose digest is all zeros (no key hashes to it).
ZERO_KEYS = re.compile(r"[\w.-]+=(?:[\w-]+:)?sha256:0{64}(?:,[\w.-]+=(?:[\w-]+:)?sha256:0{64})*")
SECRET_LOOKING = re.compile(r"-----BEGIN|whsec_|sha256:(?!0{64})[0-9a-fA-F]{64}")
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")

Doc = dict[str, Any]


# --- the checks: each returns the problems it found, empty when the file passes ---------------


def schema_problems(path: Path) -> list[str]:
    """The compose specification's JSON schema, as bundled with check-jsonschema."""
    run = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return [] if run.returncode == 0 else [run.stdout + run.stderr]


def _depends_on(service: Doc) -> dict[str, str]:
    """A service's dependencies and their conditions (the list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _one_shot(doc: Doc) -> set[str]:
    """Services other services wait on to finish: jobs, not servers."""
    return {
        target
        for service in doc["services"].values()
        for target, condition in _depends_on(service).items()
        if condition == "service_completed_successfully"
    }


def _has_healthcheck(service: Doc) -> bool:
    check = service.get("healthcheck") or {}
    return bool(check.get("test")) and not check.get("disable", False)


def dependency_problems(doc: Doc) -> list[str]:
    """Every depends_on names a service of this file (the schema cannot tell)."""
    services = doc["services"]
    return [
        f"{name} depends on {target!r}, which is not a service"
        for name, service in services.items()
        for target in _depends_on(service)
        if target not in services
    ]


def healthcheck_problems(doc: Doc) -> list[str]:
    """Every long-running service has a health check (jobs need none: they exit)."""
    jobs = _one_shot(doc)
    return [
        f"{name} runs for good but has no health check"
        for name, service in doc["services"].items()
        if name not in jobs and not _has_healthcheck(service)
    ]


RESTART = re.compile(r"always|unless-stopped|on-failure(:\d+)?")


def restart_problems(doc: Doc) -> list[str]:
    """Long-running services come back after a crash or a reboot; jobs run once (a restarted
    job would never count as completed). The schema takes any string here."""
    jobs = _one_shot(doc)
    problems = []
    for name, service in doc["services"].items():
        policy = str(service.get("restart", "no"))
        if name in jobs and policy != "no":
            problems.append(f"{name} is a one-shot job but restart is {policy!r}")
        elif name not in jobs and not RESTART.fullmatch(policy):
            problems.append(f"{name} runs for good but restart is {policy!r}")
    return problems


def healthy_dependency_problems(doc: Doc) -> list[str]:
    """A service others wait on with service_healthy has a health check, or they never start."""
    services = doc["services"]
    return [
        f"{name} waits for {target} to be healthy, but {target} has no health check"
        for name, service in services.items()
        for target, condition in _depends_on(service).items()
        if condition == "service_healthy"
        and target in services
        and not _has_healthcheck(services[target])
    ]


def _writable_targets(service: Doc) -> list[str]:
    """Where a read-only container can still write: tmpfs and writable volume mounts."""
    targets = [str(entry).split(":")[0] for entry in service.get("tmpfs") or []]
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if not volume.get("read_only"):
                targets.append(str(volume["target"]))
        elif not str(volume).endswith(":ro"):
            targets.append(str(volume).split(":")[1 if ":" in str(volume) else 0])
    return targets


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def image_problems(doc: Doc) -> list[str]:
    """The components and jobs run the project's image, each as its own `escalate run NAME`,
    on a read-only root with their scratch folder on a writable mount, the components probed
    by `escalate health NAME`."""
    services = doc["services"]
    problems = []
    for name in (*COMPONENTS, *JOBS):
        service = services.get(name)
        if service is None:
            problems.append(f"no {name} service")
            continue
        image = str(service.get("image", ""))
        try:
            resolved = {
                "default": interpolate(image, {}),
                "version": interpolate(image, {"ESCALATE_VERSION": "9.9.9"}),
                "override": interpolate(image, {"ESCALATE_IMAGE": "registry.example/e:1"}),
            }
        except (ValueError, MissingVariable) as exc:
            problems.append(f"{name}: image {image!r}: {exc}")
            continue
        if resolved != {
            "default": IMAGE_DEFAULT,
            "version": "localhost/incident-escalation:9.9.9",
            "override": "registry.example/e:1",
        }:
            problems.append(f"{name}: image {image!r} is not the project's image")
        if service.get("command") != [name]:
            problems.append(f"{name}: command {service.get('command')!r}, expected [{name!r}]")
        if service.get("read_only") is not True:
            problems.append(f"{name}: root filesystem is not read-only")
        var_dir = (service.get("environment") or {}).get("ESCALATE_VAR_DIR", IMAGE_VAR_DIR)
        if not any(_under(var_dir, target) for target in _writable_targets(service)):
            problems.append(f"{name}: its scratch folder {var_dir} is on no writable mount")
        if name in COMPONENTS:
            test = (service.get("healthcheck") or {}).get("test")
            if test != ["CMD", "escalate", "health", name]:
                problems.append(f"{name}: health check {test!r} does not probe {name}")
    return problems


def variable_problems(doc: Doc, env_example: Path) -> list[str]:
    """.env.example names every variable the file uses (and nothing else), and gives each
    required one a value, so `config` with it succeeds."""
    env = read_env_file(env_example)
    used = [ref for text in strings(doc) for ref in references(text)]
    problems = [
        f"${{{ref.name}}} is used but not listed in {env_example.name}"
        for ref in {ref.name: ref for ref in used}.values()
        if ref.name not in env
    ]
    problems += [
        f"{ref.name} is required (${{{ref.name}:?}}) but empty in {env_example.name}"
        for ref in {ref.name: ref for ref in used if ref.required}.values()
        if ref.name in env and not env[ref.name]
    ]
    names = {ref.name for ref in used}
    problems += [f"{name} in {env_example.name} is not used" for name in env if name not in names]
    return problems


def _is_bare_reference(value: str) -> bool:
    """The whole value is one ${VAR}, ${VAR:?message} or ${VAR:-} (empty default): it comes
    from outside the repository, never from the file."""
    refs = references(value)
    if len(refs) != 1:
        return False
    ref = refs[0]
    if value != f"${{{ref.name}{ref.operator}{ref.argument}}}":
        return False
    return ref.required or ref.operator == "" or (ref.operator in (":-", "-") and not ref.argument)


def secret_problems(doc: Doc, env_example: Path) -> list[str]:
    """No secret in the files: secret settings come from variables without a default, and
    .env.example holds placeholders only."""
    problems = []
    for name, service in doc["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        for key, value in environment.items():
            value = "" if value is None else str(value)
            if SECRET_NAME.search(key) and not _is_bare_reference(value):
                problems.append(f"{name}: {key} is not taken from a variable: {value!r}")
            password = re.search(r"://[^/@:]+:([^@]*)@", value)
            if password and not _is_bare_reference(password.group(1)):
                problems.append(f"{name}: {key} has a password written in the URL")
    for key, value in read_env_file(env_example).items():
        placeholder = not value or value.startswith("change-me") or ZERO_KEYS.fullmatch(value)
        if SECRET_NAME.search(key) and not placeholder:
            problems.append(f"{env_example.name}: {key} holds a value, not a placeholder")
    texts = {
        "compose file": "\n".join(strings(doc)),
        env_example.name: env_example.read_text("utf-8"),
    }
    for where, text in texts.items():
        for match in SECRET_LOOKING.finditer(text):
            problems.append(f"{where}: secret-looking text {match.group()[:20]!r}")
    return problems


def _host_ip(port: str | dict[str, Any], env: dict[str, str]) -> str:
    if isinstance(port, dict):
        return str(port.get("host_ip", "0.0.0.0"))
    parts = interpolate(str(port), env).split(":")
    return parts[0] if len(parts) == 3 else "0.0.0.0"


def exposure_problems(doc: Doc, env_example: Path) -> list[str]:
    """Only the intake and the pilot's two UIs publish ports, and with .env.example's settings
    all on the loopback address: each speaks clear-text HTTP."""
    env = read_env_file(env_example)
    problems = []
    for name, service in doc["services"].items():
        for port in service.get("ports") or []:
            if name not in PUBLISHED:
                problems.append(f"{name} publishes {port!r}")
            elif _host_ip(port, env) != "127.0.0.1":
                problems.append(f"{name} publishes {port!r} beyond the loopback address")
    return problems


def _binds(service: Doc) -> list[tuple[str, str]]:
    """(source, target) of each bind mount; short-syntax sources are paths, not volume names."""
    binds = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                binds.append((str(volume["source"]), str(volume["target"])))
        elif str(volume).startswith((".", "/", "$")):
            source, target, *_ = str(volume).split(":")
            binds.append((source, target))
    return binds


# What the components read from the configuration folder mounted at /etc/escalate.
CONFIG_FILES = ("directory.yaml", "policy.yaml")


def mount_problems(doc: Doc, env_example: Path) -> list[str]:
    """Files bind-mounted from the repository exist (compose would create a missing source as
    an empty directory, and Prometheus or Grafana would start without their configuration)."""
    env = read_env_file(env_example)
    problems = []
    for name, service in doc["services"].items():
        for source, target in _binds(service):
            path = (COMPOSE_DIR / interpolate(source, env)).resolve()
            if not path.exists():
                problems.append(f"{name} mounts {source!r}: {path} does not exist")
            elif target == "/etc/escalate":
                problems += [
                    f"{name} mounts {source!r}, which has no {file}"
                    for file in CONFIG_FILES
                    if not (path / file).is_file()
                ]
    return problems


def scrape_problems(doc: Doc, prometheus_yml: Path) -> list[str]:
    """deploy/compose/prometheus.yml scrapes every component by service name, on the port that
    component serves its metrics on with this file's environment."""
    config = yaml.safe_load(prometheus_yml.read_text("utf-8"))
    job = next((j for j in config["scrape_configs"] if j["job_name"] == "escalate"), None)
    if job is None:
        return ["no scrape job named escalate (the alerts and dashboard select job=escalate)"]
    scraped = {name: sd["port"] for sd in job.get("dns_sd_configs", []) for name in sd["names"]}
    problems = []
    for component in COMPONENTS:
        env = doc["services"][component].get("environment") or {}
        if component == "intake":
            expected = int(env.get("ESCALATE_HTTP_PORT", 8000))
        else:
            expected = int(env.get("ESCALATE_METRICS_PORT", 9400)) + METRICS_OFFSET[component]
        if scraped.get(component) != expected:
            problems.append(
                f"{component} serves metrics on {expected}, scraped on {scraped.get(component)}"
            )
    relabel = job.get("relabel_configs") or []
    if not any(r.get("target_label") == "component" for r in relabel):
        problems.append("targets get no component label (the alerts and dashboard group by it)")
    return problems


# --- the committed files pass --------------------------------------------------------------------

PROMETHEUS_YML = COMPOSE_DIR / "prometheus.yml"


def test_compose_file_matches_the_compose_spec() -> None:
    assert schema_problems(COMPOSE_FILE) == []


@pytest.mark.parametrize(
    "check",
    [
        dependency_problems,
        healthcheck_problems,
        healthy_dependency_problems,
        restart_problems,
        image_problems,
        lambda doc: variable_problems(doc, ENV_EXAMPLE),
        lambda doc: secret_problems(doc, ENV_EXAMPLE),
        lambda doc: exposure_problems(doc, ENV_EXAMPLE),
        lambda doc: mount_problems(doc, ENV_EXAMPLE),
        lambda doc: scrape_problems(doc, PROMETHEUS_YML),
    ],
    ids=[
        "dependencies",
        "healthchecks",
        "healthy-dependencies",
        "restart",
        "image",
        "variables",
        "secrets",
        "exposure",
        "mounts",
        "scrape",
    ],
)
def test_compose_file_passes(check: Callable[[Doc], list[str]]) -> None:
    assert check(load(COMPOSE_FILE)) == []


def test_no_top_level_version() -> None:
    # Obsolete in the compose specification; compose warns about it on every command.
    assert "version" not in load(COMPOSE_FILE)


def test_compose_prometheus_config_and_alert_rules_pass_promtool(tmp_path: Path) -> None:
    """The container sees the two files side by side (compose.yaml mounts them so); promtool
    is given the same layout, which also checks the rule file the config names."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is missing: apt-get install -y prometheus (tools/install-system-packages)"
        )
    shutil.copy(PROMETHEUS_YML, tmp_path / "prometheus.yml")
    shutil.copy(REPO / "deploy" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    mounts = load(COMPOSE_FILE)["services"]["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "../prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    run = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_grafana_datasource_is_the_one_the_dashboard_uses() -> None:
    compose_ds = yaml.safe_load((COMPOSE_DIR / "grafana-datasource.yml").read_text("utf-8"))
    shared = (
        REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "escalate-prometheus.yml"
    )
    shared_ds = yaml.safe_load(shared.read_text("utf-8"))
    (ours,), (theirs,) = compose_ds["datasources"], shared_ds["datasources"]
    assert {k: v for k, v in ours.items() if k != "url"} == {
        k: v for k, v in theirs.items() if k != "url"
    }
    assert ours["url"] == "http://prometheus:9090"
    assert "prometheus" in load(COMPOSE_FILE)["services"]


# --- each check refuses the broken copy it exists for --------------------------------------------


def undefined_dependency(doc: Doc) -> None:
    doc["services"]["audit"]["depends_on"]["migrations"] = {
        "condition": "service_completed_successfully"
    }


def no_healthcheck(doc: Doc) -> None:
    del doc["services"]["notifier"]["healthcheck"]


def healthy_job(doc: Doc) -> None:
    # Waiting for a job to be healthy: it has no health check, so the wait never ends.
    doc["services"]["notifier"]["depends_on"]["migrate"] = {"condition": "service_healthy"}


def restarted_job(doc: Doc) -> None:
    doc["services"]["topics"]["restart"] = "unless-stopped"


def bad_restart_policy(doc: Doc) -> None:
    # Not in compose's vocabulary; the schema lets any string through.
    doc["services"]["audit"]["restart"] = "sometimes"


def foreign_image(doc: Doc) -> None:
    doc["services"]["processors"]["image"] = "docker.io/library/python:3.11"


def writable_root(doc: Doc) -> None:
    doc["services"]["grouper"]["read_only"] = False


def no_scratch_space(doc: Doc) -> None:
    # Read-only root and no tmpfs: the processors could not create their data folder.
    del doc["services"]["processors"]["tmpfs"]


def wrong_probe(doc: Doc) -> None:
    doc["services"]["audit"]["healthcheck"]["test"] = ["CMD", "escalate", "health"]


def unlisted_variable(doc: Doc) -> None:
    doc["services"]["intake"]["environment"]["ESCALATE_NEW_KEY"] = "${ESCALATE_NEW_KEY:?set it}"


def webhook_secret(doc: Doc) -> None:
    doc["services"]["notifier"]["environment"]["SCHOOL_HOOK"] = "whsec_" + "A" * 32


def literal_secret(doc: Doc) -> None:
    doc["services"]["intake"]["environment"]["ESCALATE_SECRET_KEY"] = "s3cr3t-in-the-repo"


def secret_default(doc: Doc) -> None:
    doc["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] = (
        "${GRAFANA_ADMIN_PASSWORD:-admin}"
    )


def password_in_url(doc: Doc) -> None:
    doc["services"]["audit"]["environment"]["ESCALATE_DATABASE_URL"] = (
        "postgresql+psycopg://escalate:hunter2@postgres:5432/escalate"
    )


def published_database(doc: Doc) -> None:
    doc["services"]["postgres"]["ports"] = ["127.0.0.1:5432:5432"]


def public_grafana(doc: Doc) -> None:
    doc["services"]["grafana"]["ports"] = ["3000:3000"]


def missing_mount(doc: Doc) -> None:
    doc["services"]["prometheus"]["volumes"][0] = (
        "./prometheus-typo.yml:/etc/prometheus/prometheus.yml:ro"
    )


def moved_metrics_port(doc: Doc) -> None:
    for name in COMPONENTS:
        doc["services"][name]["environment"]["ESCALATE_METRICS_PORT"] = "9500"


BROKEN: list[tuple[str, Callable[[Doc], None], Callable[[Doc], list[str]], str]] = [
    ("undefined-dependency", undefined_dependency, dependency_problems, "'migrations'"),
    ("no-healthcheck", no_healthcheck, healthcheck_problems, "notifier runs for good"),
    ("healthy-job", healthy_job, healthy_dependency_problems, "but migrate has no health check"),
    ("restarted-job", restarted_job, restart_problems, "topics is a one-shot job"),
    ("bad-restart-policy", bad_restart_policy, restart_problems, "audit runs for good"),
    ("foreign-image", foreign_image, image_problems, "processors: image"),
    ("writable-root", writable_root, image_problems, "grouper: root filesystem"),
    ("no-scratch-space", no_scratch_space, image_problems, "processors: its scratch folder"),
    ("wrong-probe", wrong_probe, image_problems, "does not probe audit"),
    (
        "unlisted-variable",
        unlisted_variable,
        lambda doc: variable_problems(doc, ENV_EXAMPLE),
        "ESCALATE_NEW_KEY",
    ),
    (
        "literal-secret",
        literal_secret,
        lambda doc: secret_problems(doc, ENV_EXAMPLE),
        "ESCALATE_SECRET_KEY is not taken from a variable",
    ),
    (
        "webhook-secret",
        webhook_secret,
        lambda doc: secret_problems(doc, ENV_EXAMPLE),
        "secret-looking text 'whsec_",
    ),
    (
        "secret-default",
        secret_default,
        lambda doc: secret_problems(doc, ENV_EXAMPLE),
        "GF_SECURITY_ADMIN_PASSWORD",
    ),
    (
        "password-in-url",
        password_in_url,
        lambda doc: secret_problems(doc, ENV_EXAMPLE),
        "password written in the URL",
    ),
    (
        "published-database",
        published_database,
        lambda doc: exposure_problems(doc, ENV_EXAMPLE),
        "postgres publishes",
    ),
    (
        "public-grafana",
        public_grafana,
        lambda doc: exposure_problems(doc, ENV_EXAMPLE),
        "beyond the loopback",
    ),
    (
        "missing-mount",
        missing_mount,
        lambda doc: mount_problems(doc, ENV_EXAMPLE),
        "prometheus-typo.yml",
    ),
    (
        "moved-metrics-port",
        moved_metrics_port,
        lambda doc: scrape_problems(doc, PROMETHEUS_YML),
        "serves metrics on 9501",
    ),
]


@pytest.mark.parametrize(
    ("change", "check", "expected"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_check_refuses_broken_copy(
    tmp_path: Path,
    change: Callable[[Doc], None],
    check: Callable[[Doc], list[str]],
    expected: str,
) -> None:
    copy = broken_copy(tmp_path, change)
    problems = check(load(copy))
    assert any(expected in p for p in problems), problems


SCHEMA_BROKEN: dict[str, Callable[[Doc], object]] = {
    # A misspelt key: the schema allows no key it does not know.
    "misspelt-key": lambda doc: doc["services"]["kafka"]["healthcheck"].update(intervall="15s"),
    # A mapping where the schema wants a list.
    "wrong-type": lambda doc: doc["services"]["intake"].update(ports={"http": "8000:8000"}),
    # A depends_on condition compose does not know.
    "bad-condition": lambda doc: doc["services"]["audit"]["depends_on"]["kafka"].update(
        condition="service_ready"
    ),
    # A misspelt top-level key.
    "misspelt-top-level": lambda doc: doc.update(servics=doc["services"]),
}


def test_schema_refuses_broken_copies(tmp_path: Path) -> None:
    """One check-jsonschema run over all the copies (it names each file it refuses)."""
    copies = []
    for name, change in SCHEMA_BROKEN.items():
        (tmp_path / name).mkdir()
        copies.append(broken_copy(tmp_path / name, change))
    run = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", *map(str, copies)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    refused = {path.parent.name for path in copies if f"{path}::" in run.stdout}
    assert refused == set(SCHEMA_BROKEN), run.stdout + run.stderr


def _env_copy(tmp_path: Path, edit: Callable[[dict[str, str]], None]) -> Path:
    env = read_env_file(ENV_EXAMPLE)
    edit(env)
    path = tmp_path / ".env.example"
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()), "utf-8")
    return path


def test_variables_check_refuses_env_example_without_a_variable(tmp_path: Path) -> None:
    env = _env_copy(tmp_path, lambda env: env.pop("GRAFANA_ADMIN_PASSWORD"))
    problems = variable_problems(load(COMPOSE_FILE), env)
    assert any("GRAFANA_ADMIN_PASSWORD" in p and "not listed" in p for p in problems), problems


def test_variables_check_refuses_empty_required_variable(tmp_path: Path) -> None:
    env = _env_copy(tmp_path, lambda env: env.update(POSTGRES_PASSWORD=""))
    problems = variable_problems(load(COMPOSE_FILE), env)
    assert any("POSTGRES_PASSWORD is required" in p for p in problems), problems


def test_variables_check_refuses_stale_variable(tmp_path: Path) -> None:
    env = _env_copy(tmp_path, lambda env: env.update(ESCALATE_OLD_SETTING="1"))
    problems = variable_problems(load(COMPOSE_FILE), env)
    assert any("ESCALATE_OLD_SETTING" in p and "not used" in p for p in problems), problems


def test_secrets_check_refuses_a_real_value_in_env_example(tmp_path: Path) -> None:
    env = _env_copy(tmp_path, lambda env: env.update(ESCALATE_SECRET_KEY="pR0dSecr3t-xyz"))
    problems = secret_problems(load(COMPOSE_FILE), env)
    assert any("ESCALATE_SECRET_KEY holds a value" in p for p in problems), problems


def test_secrets_check_refuses_a_real_key_digest_in_env_example(tmp_path: Path) -> None:
    digest = "ab" * 32
    env = _env_copy(
        tmp_path, lambda env: env.update(ESCALATE_INTAKE_API_KEYS=f"web=sha256:{digest}")
    )
    problems = secret_problems(load(COMPOSE_FILE), env)
    assert any("ESCALATE_INTAKE_API_KEYS holds a value" in p for p in problems), problems
    assert any("secret-looking text" in p for p in problems), problems


def test_reference_parser_reads_nested_defaults_and_messages() -> None:
    # The helpers above are only as good as this parser; pin what it must understand.
    text = "${A:-x/${B:-1.0}}:${C:?set C: it matters}-$${LITERAL}"
    assert [(r.name, r.operator) for r in references(text)] == [
        ("A", ":-"),
        ("B", ":-"),
        ("C", ":?"),
    ]
    assert interpolate(text, {"C": "c"}) == "x/1.0:c-${LITERAL}"
    assert interpolate(text, {"A": "", "B": "2", "C": "c"}) == "x/2:c-${LITERAL}"
    with pytest.raises(MissingVariable, match="set C: it matters"):
        interpolate(text, {"C": ""})
