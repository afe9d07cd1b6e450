"""deploy/compose/compose.yaml through the real `docker compose config` (issue 14), in
`make test-deploy`.

`config` loads the file exactly as `up` would (schema, variable substitution, references
between services, durations, relative paths) and needs no Docker engine, so it is the closest
this machine gets to starting the stack. The binary is built once from the Go proxy by
deploy/tools/build-compose and cached under ~/.cache/escalate/tools/ (minutes the first time,
instant afterwards).

Broken copies are written to a temporary folder and loaded with --project-directory set to
deploy/compose/, so their relative paths point where the original's do.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.compose_support import (
    BUILD_COMPOSE,
    COMPOSE_DIR,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO,
    broken_copy,
    read_env_file,
)

Doc = dict[str, Any]

# The first test pays for the cold build of docker compose (about 5 minutes measured on two
# busy cores), which the suite's default timeout of 300 s would cut off; later runs take seconds.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def docker_compose() -> Path:
    run = subprocess.run(
        [str(BUILD_COMPOSE)], capture_output=True, text=True, timeout=1800, cwd=REPO
    )
    assert run.returncode == 0, f"deploy/tools/build-compose failed:\n{run.stderr[-4000:]}"
    path = Path(run.stdout.strip().splitlines()[-1])
    assert path.is_file() and os.access(path, os.X_OK), run.stdout
    return path


def compose_config(
    binary: Path, tmp_path: Path, compose_file: Path, env_file: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`docker compose config` in a clean environment: variables set in the caller's shell
    would override the env file, and --env-file keeps a deploy/compose/.env (real secrets,
    ignored by git) from being read at all. The committed file is loaded as an operator would
    (paths relative to its own folder); a copy elsewhere gets that folder as project directory."""
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    env["DOCKER_CONFIG"] = str(docker_config)  # no credentials or contexts of the user's
    project = [] if compose_file == COMPOSE_FILE else ["--project-directory", str(COMPOSE_DIR)]
    return subprocess.run(
        [
            str(binary),
            "-f",
            str(compose_file),
            *project,
            "--env-file",
            str(env_file),
            "config",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )


def test_config_accepts_the_committed_file_with_env_example(
    docker_compose: Path, tmp_path: Path
) -> None:
    run = compose_config(docker_compose, tmp_path, COMPOSE_FILE, ENV_EXAMPLE, "-q")
    assert run.returncode == 0, run.stderr
    # Compose only warns about a variable it finds nowhere (and substitutes ""): none may be.
    assert run.stderr.strip() == "", run.stderr


def test_resolved_project_is_what_the_pilot_gets(docker_compose: Path, tmp_path: Path) -> None:
    """compose's own resolution: the image tag, and bind mounts that land on repository files."""
    run = compose_config(docker_compose, tmp_path, COMPOSE_FILE, ENV_EXAMPLE, "--format", "json")
    assert run.returncode == 0, run.stderr
    project = json.loads(run.stdout)
    assert project["name"] == "incident-escalation"
    services = project["services"]
    assert services["processors"]["image"] == "localhost/incident-escalation:0.1.0"
    binds = [
        (name, volume["source"])
        for name, service in services.items()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    ]
    assert {name for name, _ in binds} >= {"prometheus", "grafana", "intake", "audit"}
    missing = [(name, source) for name, source in binds if not Path(source).exists()]
    assert missing == [], missing
    # Secrets reach only the services that use them.
    holders = {
        name
        for name, service in services.items()
        if "ESCALATE_SECRET_KEY" in (service.get("environment") or {})
    }
    assert holders == {"intake", "grouper", "notifier"}
    assert "ESCALATE_DATABASE_URL" not in services["notifier"].get("environment", {})


def test_an_unchanged_copy_resolves_like_the_original(docker_compose: Path, tmp_path: Path) -> None:
    """The control for the broken copies below: a copy outside deploy/compose/ loads the same."""
    copy = broken_copy(tmp_path, lambda doc: None)
    original = compose_config(docker_compose, tmp_path, COMPOSE_FILE, ENV_EXAMPLE)
    copied = compose_config(docker_compose, tmp_path, copy, ENV_EXAMPLE)
    assert original.returncode == copied.returncode == 0, copied.stderr
    assert copied.stdout == original.stdout


def undefined_dependency(doc: Doc) -> None:
    doc["services"]["audit"]["depends_on"]["migrations"] = {
        "condition": "service_completed_successfully"
    }


def bad_duration(doc: Doc) -> None:
    doc["services"]["kafka"]["healthcheck"]["interval"] = "15 seconds"


def misspelt_key(doc: Doc) -> None:
    doc["services"]["intake"]["healthcheck"]["intervall"] = "30s"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (undefined_dependency, 'service "audit" depends on undefined service "migrations"'),
        (bad_duration, 'unknown unit " seconds" in duration "15 seconds"'),
        (misspelt_key, "additional properties 'intervall' not allowed"),
    ],
    ids=["undefined-dependency", "bad-duration", "misspelt-key"],
)
def test_config_refuses_broken_copy(
    docker_compose: Path, tmp_path: Path, change: Callable[[Doc], None], message: str
) -> None:
    copy = broken_copy(tmp_path, change)
    run = compose_config(docker_compose, tmp_path, copy, ENV_EXAMPLE, "-q")
    assert run.returncode != 0
    assert message in run.stderr, run.stderr


def _env_without(tmp_path: Path, name: str, empty: bool) -> Path:
    env = read_env_file(ENV_EXAMPLE)
    if empty:
        env[name] = ""
    else:
        del env[name]
    path = tmp_path / "broken.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()), "utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "empty"),
    [
        ("POSTGRES_PASSWORD", False),
        ("ESCALATE_SECRET_KEY", False),
        ("ESCALATE_INTAKE_API_KEYS", True),
        ("GRAFANA_ADMIN_PASSWORD", True),
        ("ESCALATE_PUBLIC_URL", False),
    ],
    ids=["postgres-password-unset", "secret-key-unset", "api-keys-empty", "grafana-empty", "url"],
)
def test_config_refuses_a_missing_required_variable(
    docker_compose: Path, tmp_path: Path, name: str, empty: bool
) -> None:
    """A copied .env.example with a secret left out (or emptied) must stop compose, naming the
    variable and where to set it, before any container starts."""
    run = compose_config(
        docker_compose, tmp_path, COMPOSE_FILE, _env_without(tmp_path, name, empty), "-q"
    )
    assert run.returncode != 0
    assert f"required variable {name} is missing a value" in run.stderr, run.stderr
    assert "deploy/compose/.env" in run.stderr, run.stderr
