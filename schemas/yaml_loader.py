"""Load operator-edited YAML into a pydantic model, naming the file, key and line of any mistake."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names where and why."""


def _line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map every key path in the document to its 1-based line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            lines.update(_line_index(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, i)))
    return lines


def _find_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    # pydantic locations may hold str keys where YAML had ints, or extra union tags; walk back
    # to the deepest prefix we know.
    probe = tuple(str(p) if not isinstance(p, int) else p for p in loc)
    for end in range(len(probe), -1, -1):
        if probe[:end] in lines:
            return lines[probe[:end]]
        alt = tuple(str(p) for p in probe[:end])
        if alt in lines:
            return lines[alt]
    return None


def parse_yaml_text(text: str, model: type[M], source: str) -> M:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {exc.problem}") from exc
    except yaml.reader.ReaderError as exc:
        # A character YAML does not allow (a control character pasted in, say): name the line.
        at_line = text.count("\n", 0, exc.position) + 1
        char = exc.character
        shown = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        raise ConfigError(
            f"{source}:{at_line}: not valid YAML: character {shown} is not allowed"
        ) from exc
    except yaml.YAMLError as exc:  # any other way the text is not YAML
        raise ConfigError(f"{source}: not valid YAML: {type(exc).__name__}") from exc
    if node is None or data is None:
        raise ConfigError(f"{source}: the file is empty")
    lines = _line_index(node)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _find_line(lines, loc)
            key = ".".join(str(p) for p in loc) or "(top level)"
            where = f"{source}:{line}" if line else source
            problems.append(f"{where}: {key}: {err['msg']}")
        raise ConfigError("\n".join(problems)) from exc


def load_yaml_model(path: Path, model: type[M]) -> M:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    return parse_yaml_text(text, model, str(path))


def content_version(model: BaseModel) -> str:
    """A short content hash of the effective configuration, recorded with every decision."""
    canonical = model.model_dump_json(by_alias=True, exclude_none=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
