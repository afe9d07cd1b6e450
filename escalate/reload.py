"""``escalate policy reload``: validate the configured files, then make the pipeline reread them.

Running processors look at the files' modification stamps about once a second, so after a
successful check this only has to refresh the stamp; a file that fails the check is not poked,
and the running pipeline keeps the version it has.
"""

from __future__ import annotations

import os
import sys

from escalate.settings import Settings


def request_reload(settings: Settings) -> int:
    from schemas.policy import Policy
    from schemas.yaml_loader import content_version, load_yaml_model
    from stream_processors.classification.policy_tools import check_files

    paths = [settings.policy_file, settings.directory_file]
    problems = check_files(paths)
    if problems:
        print("not reloaded; the running pipeline keeps its current policy:", file=sys.stderr)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    for path in paths:
        os.utime(path)
    version = content_version(load_yaml_model(settings.policy_file, Policy))
    print(f"policy {version} will be in force within a few seconds")
    return 0
