"""Composition root: settings, the ``escalate`` CLI and the process that runs the pipeline."""
