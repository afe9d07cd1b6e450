"""Reading deploy/compose/ as `docker compose` does, for tests/deploy/test_compose.py and
tests/deploy/server/test_compose_config.py.

Only the part of compose's variable syntax the stack uses is understood: ``${NAME}``,
``${NAME:-default}``/``${NAME-default}``, ``${NAME:?message}``/``${NAME?message}``,
``${NAME:+other}``/``${NAME+other}``, nested in the default, and ``$$`` for a literal ``$``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
BUILD_COMPOSE = REPO / "deploy" / "tools" / "build-compose"

# libyaml when PyYAML has it: the broken-copy tests load and write the file many times.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


@dataclass(frozen=True)
class Reference:
    """One ``${...}``: the variable, its operator ("" for none) and the text after it."""

    name: str
    operator: str
    argument: str

    @property
    def required(self) -> bool:
        return self.operator in (":?", "?")


def _scan(text: str) -> Iterator[tuple[int, int, Reference]]:
    """Each top-level reference in ``text`` with its start and end offsets."""
    i = 0
    while (start := text.find("$", i)) != -1:
        if text.startswith("$$", start):
            i = start + 2
            continue
        if not text.startswith("${", start):
            i = start + 1
            continue
        name = _NAME.match(text, start + 2)
        if name is None:
            raise ValueError(f"bad variable reference at {text[start : start + 20]!r}")
        j = name.end()
        operator = next((op for op in _OPERATORS if text.startswith(op, j)), "")
        j += len(operator)
        depth, k = 1, j
        while k < len(text) and depth:
            if text.startswith("${", k):
                depth, k = depth + 1, k + 2
                continue
            if text[k] == "}":
                depth -= 1
            k += 1
        if depth:
            raise ValueError(f"unclosed variable reference in {text!r}")
        yield start, k, Reference(name.group(), operator, text[j : k - 1])
        i = k


def references(text: str) -> list[Reference]:
    """Every reference in ``text``, those nested in a default included."""
    found = []
    for _, _, ref in _scan(text):
        found.append(ref)
        found.extend(references(ref.argument))
    return found


class MissingVariable(ValueError):
    """A ``${NAME:?message}`` whose variable is unset (or empty, for ``:?``)."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` with its references resolved against ``env``, as compose would."""
    out, i = [], 0
    for start, end, ref in _scan(text):
        out.append(text[i:start].replace("$$", "$"))
        value = env.get(ref.name)
        unset = value is None or (ref.operator.startswith(":") and value == "")
        if ref.operator in (":-", "-"):
            out.append(interpolate(ref.argument, env) if unset else str(value))
        elif ref.operator in (":?", "?"):
            if unset:
                raise MissingVariable(f"{ref.name}: {ref.argument}")
            out.append(str(value))
        elif ref.operator in (":+", "+"):
            out.append("" if unset else interpolate(ref.argument, env))
        else:
            out.append(value or "")
        i = end
    out.append(text[i:].replace("$$", "$"))
    return "".join(out)


def strings(node: Any) -> Iterator[str]:
    """Every string (keys excluded) of a loaded YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a compose env file; comments and blank lines skipped."""
    env = {}
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not _NAME.fullmatch(name.strip()):
            raise ValueError(f"{path}:{number}: not NAME=value: {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[name.strip()] = value
    return env


def load(path: Path) -> dict[str, Any]:
    """The compose file as plain data. Anchors and merge keys are expanded, and the JSON round
    trip unshares what YAML aliases share, so a test can change one service alone."""
    doc = json.loads(json.dumps(yaml.load(path.read_text("utf-8"), Loader=_LOADER)))
    assert isinstance(doc, dict), f"{path} is not a mapping"
    return doc


def broken_copy(
    directory: Path, change: Callable[[dict[str, Any]], object], name: str = "compose.yaml"
) -> Path:
    """The committed compose file with one deliberate change, written to ``directory``."""
    doc = load(COMPOSE_FILE)
    change(doc)
    path = directory / name
    path.write_text(yaml.dump(doc, Dumper=_DUMPER, sort_keys=False), "utf-8")
    return path
