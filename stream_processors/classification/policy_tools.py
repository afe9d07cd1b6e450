"""``escalate policy check`` and ``escalate policy show``.

Check decides by content whether a file is the policy or the directory, so operators can pass
either (or both) without flags. Show prints the effective policy as YAML that loads back to the
same content version, with Vietnamese text left readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from schemas.directory import Directory
from schemas.policy import Policy
from schemas.yaml_loader import ConfigError, load_yaml_model
from stream_processors.classification.engine import Classifier

DIRECTORY_KEYS = ("districts", "city_office")


def _kind(path: Path) -> type[BaseModel] | str:
    """The model for this file, or a problem string when the file cannot even be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return f"{path}: cannot read: {exc.strerror}"
    except UnicodeDecodeError:
        return f"{path}: not UTF-8 text"
    try:
        data: Any = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        return f"{where}: not valid YAML: {exc.problem}"
    if not isinstance(data, dict):
        return f"{path}:1: expected a mapping of keys (a policy or a directory file)"
    if any(key in data for key in DIRECTORY_KEYS):
        return Directory
    return Policy


def check_files(paths: list[Path]) -> list[str]:
    """Every problem found, each naming file:line; an empty list means all files are usable."""
    problems: list[str] = []
    for path in paths:
        kind = _kind(path)
        if isinstance(kind, str):
            problems.append(kind)
            continue
        try:
            model = load_yaml_model(path, kind)
        except ConfigError as exc:
            problems.extend(str(exc).splitlines())
            continue
        if isinstance(model, Policy):
            try:
                Classifier(model)
            except ValueError as exc:  # a phrase that normalises to nothing, for example
                problems.append(f"{path}: classification: {exc}")
    return problems


def show_policy(policy: Policy) -> str:
    """The effective policy as YAML; defaults are left out, so it reads like the source."""
    data = policy.model_dump(mode="json", exclude_defaults=True)
    return yaml.safe_dump(
        data, allow_unicode=True, sort_keys=False, default_flow_style=False, width=100
    )
