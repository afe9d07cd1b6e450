"""Holds the effective policy, classifier and directory, and swaps them when their files change.

A running pipeline picks up an edited policy without a restart. A file that fails validation
is refused and the previous version stays in force, so a typo never stops routing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from schemas.directory import Directory
from schemas.policy import Policy
from schemas.yaml_loader import ConfigError, content_version, load_yaml_model
from stream_processors.classification.engine import Classifier
from stream_processors.classification.model import TrainedModel
from stream_processors.classification.second_opinion import Judge
from stream_processors.routing.directory_index import DirectoryIndex

log = logging.getLogger("escalate.config")


@dataclass(frozen=True)
class LoadedConfig:
    policy: Policy
    classifier: Judge
    directory: DirectoryIndex
    policy_version: str
    directory_version: str


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size)


def load_config(
    policy_file: Path, directory_file: Path, model: TrainedModel | None = None
) -> LoadedConfig:
    policy = load_yaml_model(policy_file, Policy)
    directory = load_yaml_model(directory_file, Directory)
    return LoadedConfig(
        policy=policy,
        classifier=Judge(Classifier(policy), model),
        directory=DirectoryIndex(directory),
        policy_version=content_version(policy),
        directory_version=content_version(directory),
    )


class ConfigHolder:
    def __init__(
        self,
        policy_file: Path,
        directory_file: Path,
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_reload: Callable[[LoadedConfig], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
        model: TrainedModel | None = None,
    ) -> None:
        # The model is loaded once per process by the caller; a policy change keeps it.
        self.model = model
        self.policy_file = policy_file
        self.directory_file = directory_file
        self._check_every_s = check_every_s
        self._clock = clock
        self._on_reload = on_reload
        self._on_refused = on_refused
        self._config = load_config(policy_file, directory_file, model)
        self._stamps = self._read_stamps()
        self._next_check = clock() + check_every_s

    def subscribe(
        self,
        on_reload: Callable[[LoadedConfig], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """Set the callbacks for an applied and for a refused change (metrics use them)."""
        if on_reload is not None:
            self._on_reload = on_reload
        if on_refused is not None:
            self._on_refused = on_refused

    def _read_stamps(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return (_stamp(self.policy_file), _stamp(self.directory_file))

    def current(self) -> LoadedConfig:
        """The config in force; looks at the files at most once per ``check_every_s``."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._check_every_s
            self.reload()
        return self._config

    def reload(self, force: bool = False) -> bool:
        """Reread the files if they changed (or ``force``); True when a new config took effect."""
        try:
            stamps = self._read_stamps()
        except OSError as exc:
            self._refuse(f"cannot read config files: {exc.strerror}")
            return False
        if stamps == self._stamps and not force:
            return False
        try:
            fresh = load_config(self.policy_file, self.directory_file, self.model)
        except ConfigError as exc:
            self._stamps = stamps
            self._refuse(str(exc))
            return False
        self._stamps = stamps
        changed = (fresh.policy_version, fresh.directory_version) != (
            self._config.policy_version,
            self._config.directory_version,
        )
        self._config = fresh
        if changed:
            log.info(
                "config reloaded: policy %s, directory %s",
                fresh.policy_version,
                fresh.directory_version,
            )
            if self._on_reload:
                self._on_reload(fresh)
        return changed

    def _refuse(self, problem: str) -> None:
        log.error(
            "config change refused, keeping version %s: %s", self._config.policy_version, problem
        )
        if self._on_refused:
            self._on_refused(problem)
