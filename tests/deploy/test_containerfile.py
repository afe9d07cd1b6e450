"""deploy/image/Containerfile checked without building it (fast; part of ``make test``).

hadolint lints it; the rules hadolint has no opinion on (it does not even flag a missing USER)
are checked here on the parsed instructions: two stages at least, both from the BASE argument,
a numeric non-root user, a HEALTHCHECK, ``escalate run`` as the exec-form entry point, no
build tools or installers in the runtime stage. Each check is also run on a deliberately broken
copy of the file and must refuse it, so none of them can pass by checking nothing.
tests/image builds the image and runs it.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.conftest import REPO

IMAGE_DIR = REPO / "deploy" / "image"
CONTAINERFILE = IMAGE_DIR / "Containerfile"
HADOLINT_CONFIG = IMAGE_DIR / ".hadolint.yaml"
LOCK = IMAGE_DIR / "requirements.lock"
CONTAINERIGNORE = REPO / ".containerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"

# ---- the checks: each returns what is wrong, an empty list when nothing is ---------------------


@dataclass
class Instruction:
    name: str  # upper case: FROM, RUN, ...
    value: str  # continuation lines joined, as dockerfile-parse gives them


def stages(text: str) -> list[list[Instruction]]:
    """The instructions of each stage; those before the first FROM (global ARGs) are stage -1's
    and are dropped here."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode("utf-8")), env_replace=False)
    found: list[list[Instruction]] = []
    for item in parser.structure:
        if item["instruction"] == "COMMENT":
            continue
        instruction = Instruction(item["instruction"], item["value"])
        if instruction.name == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def global_args(text: str) -> dict[str, str]:
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode("utf-8")), env_replace=False)
    args: dict[str, str] = {}
    for item in parser.structure:
        if item["instruction"] == "FROM":
            break
        if item["instruction"] == "ARG":
            name, _, default = item["value"].partition("=")
            args[name.strip()] = default.strip()
    return args


def check_stages(text: str) -> list[str]:
    """A build stage and a runtime stage at least: what compiles and installs stays behind."""
    count = len(stages(text))
    return [] if count >= 2 else [f"{count} stage(s): a build stage and a runtime stage needed"]


def check_from_base(text: str) -> list[str]:
    """Every stage starts from the BASE argument (or an earlier stage), so the locally made
    Debian base and the official image are interchangeable without editing the file."""
    problems = []
    if not global_args(text).get("BASE"):
        problems.append("no global `ARG BASE=<default image>` before the first FROM")
    names: set[str] = set()
    for stage in stages(text):
        image, *alias = re.split(r"\s+as\s+", stage[0].value.strip(), flags=re.I)
        if image not in ("${BASE}", "$BASE") and image not in names:
            problems.append(f"FROM {image}: not the BASE argument")
        names.update(a.strip() for a in alias)
    return problems


def check_user(text: str) -> list[str]:
    """The runtime stage's last USER: numeric (Kubernetes' runAsNonRoot can only verify a
    number) and neither root user nor root group."""
    found = stages(text)
    if not found:
        return ["no stage"]
    users = [i.value.strip() for i in found[-1] if i.name == "USER"]
    if not users:
        return ["the runtime stage has no USER: it would run as root"]
    user, _, group = users[-1].partition(":")
    problems = []
    for what, value in (("user", user), ("group", group or user)):
        if not value.isdigit():
            problems.append(f"USER {users[-1]}: {what} {value!r} is not numeric")
        elif int(value) == 0:
            problems.append(f"USER {users[-1]}: {what} is root")
    return problems


def check_healthcheck(text: str) -> list[str]:
    """A HEALTHCHECK in the runtime stage, running `escalate health`."""
    found = stages(text)
    checks = [i.value for i in found[-1] if i.name == "HEALTHCHECK"] if found else []
    if not checks:
        return ["the runtime stage has no HEALTHCHECK"]
    command = checks[-1].partition("CMD")[2].strip()
    if checks[-1].strip().upper() == "NONE" or not command:
        return [f"HEALTHCHECK {checks[-1]}: no command"]
    try:
        argv = json.loads(command)
    except json.JSONDecodeError:
        return [f"HEALTHCHECK CMD {command}: not exec form"]
    if Path(argv[0]).name != "escalate" or argv[1:2] != ["health"]:
        return [f"HEALTHCHECK CMD {argv}: not `escalate health`"]
    return []


def check_entrypoint(text: str) -> list[str]:
    """ENTRYPOINT ["…/escalate", "run"] in exec form: the component is the CMD, and escalate is
    PID 1, so the orchestrator's SIGTERM reaches it (a shell form would leave sh as PID 1)."""
    found = stages(text)
    entries = [i.value for i in found[-1] if i.name == "ENTRYPOINT"] if found else []
    if not entries:
        return ["the runtime stage has no ENTRYPOINT"]
    try:
        argv = json.loads(entries[-1])
    except json.JSONDecodeError:
        return [f"ENTRYPOINT {entries[-1]}: shell form, not exec form"]
    if not argv or Path(argv[0]).name != "escalate" or argv[1:] != ["run"]:
        return [f"ENTRYPOINT {argv}: not `escalate run`"]
    return []


#: package installs and build tools the runtime stage must not have
INSTALLS = re.compile(
    r"\b(apt-get|apt|apk|dnf|yum|microdnf|zypper)\b[^;&|]*\binstall\b"
    r"|\bpip[\d.]*\b[^;&|]*\b(install|wheel)\b"
    r"|\b(python[\d.]*\s+-m\s+pip)\b"
)
BUILD_TOOLS = re.compile(r"(?<![\w-])(gcc|g\+\+|cc|clang|make|cmake|build-essential|[\w.+]+-dev)\b")


def check_runtime_tools(text: str) -> list[str]:
    """The runtime stage installs nothing and takes only the venv from the build stage."""
    found = stages(text)
    if len(found) < 2:
        return ["single stage: the build tools would be in the runtime image"]
    problems = []
    for instruction in found[-1]:
        if instruction.name == "RUN":
            for pattern in (INSTALLS, BUILD_TOOLS):
                hit = pattern.search(instruction.value)
                if hit:
                    problems.append(
                        f"RUN …{hit.group(0)}…: installs or builds in the runtime stage"
                    )
        if instruction.name in ("COPY", "ADD") and "--from=" in instruction.value:
            sources = [w for w in instruction.value.split() if not w.startswith("--")][:-1]
            for source in sources:
                if not source.startswith("/opt/escalate"):
                    problems.append(f"COPY --from {source}: only the venv belongs in the runtime")
    return problems


def check_runtime_env(text: str) -> list[str]:
    """Listening beyond loopback, and the var directory the orchestrator mounts."""
    found = stages(text)
    env = " ".join(i.value for i in found[-1] if i.name == "ENV") if found else ""
    wanted = ("ESCALATE_HTTP_HOST=0.0.0.0", "ESCALATE_VAR_DIR=/var/lib/escalate")
    return [f"runtime ENV lacks {w}" for w in wanted if w not in env.split()]


def check_context(text: str, ignore: str) -> list[str]:
    """.containerignore keeps out everything but an allowlist, and the allowlist covers every
    path the build copies from the context."""
    lines = [ln.strip() for ln in ignore.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines or lines[0] != "*":
        return [".containerignore does not start by leaving everything out (`*`)"]
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    problems = []
    for stage in stages(text):
        for instruction in stage:
            if instruction.name not in ("COPY", "ADD") or "--from=" in instruction.value:
                continue
            for source in instruction.value.split()[:-1]:
                if source.startswith("--"):
                    continue
                if not any(source == a or source.startswith(a + "/") for a in allowed):
                    problems.append(f"COPY {source}: left out of the context by .containerignore")
    return problems


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\[=<>!~; ]", requirement, maxsplit=1)[0]).lower()


def check_lock(pyproject: str, lock: str) -> list[str]:
    """Every runtime dependency pinned in pyproject.toml is in the image's lock at that version,
    and every line of the lock is an exact pin."""
    pins: dict[str, str] = {}
    problems = []
    for line in lock.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=]+)", line)
        if match is None:
            problems.append(f"lock line {line!r}: not name==version")
            continue
        pins[_name(match[1])] = match[2]
    for requirement in tomllib.loads(pyproject)["project"]["dependencies"]:
        name = _name(requirement)
        wanted = requirement.partition("==")[2].strip()
        if name not in pins:
            problems.append(f"{name}: in pyproject.toml, not in the lock")
        elif wanted and pins[name] != wanted:
            problems.append(f"{name}: pyproject.toml says {wanted}, the lock {pins[name]}")
    return problems


# ---- the real files pass ---------------------------------------------------------------------

TEXT = CONTAINERFILE.read_text("utf-8")
CHECKS: dict[str, Callable[[str], list[str]]] = {
    "stages": check_stages,
    "from_base": check_from_base,
    "user": check_user,
    "healthcheck": check_healthcheck,
    "entrypoint": check_entrypoint,
    "runtime_tools": check_runtime_tools,
    "runtime_env": check_runtime_env,
}


def hadolint(text: str, tmp_path: Path) -> list[dict[str, object]]:
    """hadolint's findings on ``text`` with the project's config (JSON; [] when clean)."""
    target = tmp_path / "Containerfile"
    target.write_text(text, "utf-8")
    done = subprocess.run(
        [str(HADOLINT), "--config", str(HADOLINT_CONFIG), "--format", "json", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip().startswith("["), f"hadolint did not answer JSON: {done.stderr}"
    findings: list[dict[str, object]] = json.loads(done.stdout)
    assert (done.returncode == 0) == (findings == []), (done.returncode, findings)
    return findings


def test_hadolint_passes(tmp_path: Path) -> None:
    assert hadolint(TEXT, tmp_path) == []


@pytest.mark.parametrize("check", CHECKS)
def test_containerfile_passes(check: str) -> None:
    assert CHECKS[check](TEXT) == []


def test_context_allows_what_the_build_copies() -> None:
    assert check_context(TEXT, CONTAINERIGNORE.read_text("utf-8")) == []


def test_lock_matches_pyproject() -> None:
    pyproject = (REPO / "pyproject.toml").read_text("utf-8")
    problems = check_lock(pyproject, LOCK.read_text("utf-8"))
    assert problems == [], f"{problems}: rewrite the lock with `deploy/image/build --lock`"


# ---- and broken copies are refused, each by the check meant to catch it ----------------------


def replace(old: str, new: str, count: int = 1) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        assert old in text, f"mutation target {old!r} is gone from the Containerfile"
        return text.replace(old, new, count)

    return mutate


def replace_last(old: str, new: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        assert old in text, f"mutation target {old!r} is gone from the Containerfile"
        head, _, tail = text.rpartition(old)
        return head + new + tail

    return mutate


def drop_instruction(keyword: str) -> Callable[[str], str]:
    """Remove every instruction starting with ``keyword``, continuation lines included."""

    def mutate(text: str) -> str:
        pattern = re.compile(rf"^{keyword}\b(?:[^\n]*\\\n)*[^\n]*\n", re.M)
        assert pattern.search(text), f"no {keyword} in the Containerfile"
        return pattern.sub("", text)

    return mutate


def after_last_from(line: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        head, sep, tail = text.rpartition("\nFROM ${BASE}\n")
        assert sep, "the runtime FROM is gone from the Containerfile"
        return head + sep + line + "\n" + tail

    return mutate


def merge_stages(text: str) -> str:
    """One stage: the runtime FROM removed, its COPY --from with it (it would not resolve)."""
    text = replace_last("\nFROM ${BASE}\n", "\n")(text)
    return re.sub(r"^COPY --from=build [^\n]*\n", "", text, flags=re.M)


MUTANTS: dict[str, tuple[Callable[[str], str], str]] = {
    # name: (how the file is broken, the check that must refuse it)
    "single stage": (merge_stages, "stages"),
    "runtime from a fixed image": (
        replace_last("FROM ${BASE}", "FROM docker.io/library/python:3.11-slim-bookworm"),
        "from_base",
    ),
    "build from a fixed image": (
        replace("FROM ${BASE} AS build", "FROM docker.io/library/python:3.11 AS build"),
        "from_base",
    ),
    "no BASE argument": (drop_instruction("ARG BASE"), "from_base"),
    "user removed": (drop_instruction("USER"), "user"),
    "user root": (replace("USER 10001:10001", "USER root"), "user"),
    "user 0": (replace("USER 10001:10001", "USER 0"), "user"),
    "root group": (replace("USER 10001:10001", "USER 10001:0"), "user"),
    "user by name": (replace("USER 10001:10001", "USER escalate"), "user"),
    "user only in the build stage": (
        lambda t: replace("WORKDIR /src\n", "WORKDIR /src\nUSER 10001:10001\n")(
            drop_instruction("USER")(t)
        ),
        "user",
    ),
    "user reset to root at the end": (lambda t: t + "USER 0:0\n", "user"),
    "healthcheck removed": (drop_instruction("HEALTHCHECK"), "healthcheck"),
    "healthcheck none": (
        lambda t: drop_instruction("HEALTHCHECK")(t) + "HEALTHCHECK NONE\n",
        "healthcheck",
    ),
    "healthcheck of something else": (
        replace('CMD ["/opt/escalate/bin/escalate", "health"]', 'CMD ["true"]'),
        "healthcheck",
    ),
    "entrypoint removed": (drop_instruction("ENTRYPOINT"), "entrypoint"),
    "entrypoint shell form": (
        replace('ENTRYPOINT ["/opt/escalate/bin/escalate", "run"]', "ENTRYPOINT escalate run"),
        "entrypoint",
    ),
    "entrypoint not escalate": (
        replace('ENTRYPOINT ["/opt/escalate/bin/escalate", "run"]', 'ENTRYPOINT ["python3"]'),
        "entrypoint",
    ),
    "compiler in the runtime": (
        after_last_from("RUN apt-get update && apt-get install -y --no-install-recommends gcc"),
        "runtime_tools",
    ),
    "pip install in the runtime": (
        after_last_from("RUN pip install --no-cache-dir requests==2.32.3"),
        "runtime_tools",
    ),
    "headers in the runtime": (
        after_last_from("RUN apt-get update && apt-get install -y libpq-dev"),
        "runtime_tools",
    ),
    "wheels copied to the runtime": (
        after_last_from("COPY --from=build /wheels /wheels"),
        "runtime_tools",
    ),
    "listening on loopback only": (
        replace("ESCALATE_HTTP_HOST=0.0.0.0", "ESCALATE_HTTP_HOST=127.0.0.1"),
        "runtime_env",
    ),
}


@pytest.mark.parametrize("mutant", MUTANTS)
def test_broken_containerfile_is_refused(mutant: str) -> None:
    mutate, check = MUTANTS[mutant]
    broken = mutate(TEXT)
    assert broken != TEXT
    assert CHECKS[check](broken), f"check {check!r} let {mutant!r} through"


#: broken copies hadolint itself must refuse, with the rule expected to fire
HADOLINT_MUTANTS: dict[str, tuple[Callable[[str], str], str]] = {
    "apt without -y": (
        replace("apt-get install -y --no-install", "apt-get install --no-install"),
        "DL3014",
    ),
    "apt with recommends": (replace(" --no-install-recommends", ""), "DL3015"),
    # hadolint asks for the apt lists to be deleted in the last stage only (the build stage's
    # are thrown away with it), so the broken copy installs in the runtime stage.
    "apt lists kept": (
        after_last_from(
            "RUN apt-get update && apt-get install -y --no-install-recommends tini=0.19.0-1+b3"
        ),
        "DL3009",
    ),
    "cd instead of WORKDIR": (replace("WORKDIR /src\n", "RUN cd /src\n"), "DL3003"),
    "unpinned pip install": (after_last_from("RUN pip install --no-cache-dir requests"), "DL3013"),
    "licence label lost": (
        replace(' \\\n      org.opencontainers.image.licenses="Apache-2.0"', ""),
        "DL3049",
    ),
    "licence not SPDX": (replace('licenses="Apache-2.0"', 'licenses="Apache 2"'), "DL3054"),
    "label not in the schema": (lambda t: t + 'LABEL maintainer="someone"\n', "DL3050"),
}


@pytest.mark.parametrize("mutant", HADOLINT_MUTANTS)
def test_hadolint_refuses_broken_copy(mutant: str, tmp_path: Path) -> None:
    mutate, rule = HADOLINT_MUTANTS[mutant]
    codes = {str(f["code"]) for f in hadolint(mutate(TEXT), tmp_path)}
    assert rule in codes, f"hadolint let {mutant!r} through (found {sorted(codes)})"


CONTEXT_MUTANTS: dict[str, Callable[[str], str]] = {
    "a copied package left out": lambda ignore: ignore.replace("!schemas\n", ""),
    "lock left out": lambda ignore: ignore.replace("!deploy/image/requirements.lock\n", ""),
    "denylist instead of allowlist": lambda ignore: ignore.replace("\n*\n", "\n.venv\n"),
}


@pytest.mark.parametrize("mutant", CONTEXT_MUTANTS)
def test_broken_context_is_refused(mutant: str) -> None:
    ignore = CONTAINERIGNORE.read_text("utf-8")
    broken = CONTEXT_MUTANTS[mutant](ignore)
    assert broken != ignore
    assert check_context(TEXT, broken), f"{mutant!r} let through"


LOCK_MUTANTS: dict[str, Callable[[str], str]] = {
    "pin moved": lambda lock: re.sub(r"^numpy==.*$", "numpy==1.26.4", lock, flags=re.M),
    "dependency missing": lambda lock: re.sub(r"^fastapi==.*\n", "", lock, flags=re.M),
    "range instead of pin": lambda lock: re.sub(r"^tqdm==", "tqdm>=", lock, flags=re.M),
}


@pytest.mark.parametrize("mutant", LOCK_MUTANTS)
def test_broken_lock_is_refused(mutant: str) -> None:
    lock = LOCK.read_text("utf-8")
    broken = LOCK_MUTANTS[mutant](lock)
    assert broken != lock
    assert check_lock((REPO / "pyproject.toml").read_text("utf-8"), broken), f"{mutant!r}"
