"""Describing why a message does not fit its contract, without echoing what it contained."""

from __future__ import annotations

from pydantic import ValidationError


def validation_reason(exc: ValidationError) -> str:
    """Describe what is wrong without echoing the input, which may hold a child's report."""
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
        for err in exc.errors(include_input=False, include_url=False)
    ]
    return f"invalid {exc.title}: " + "; ".join(parts)
