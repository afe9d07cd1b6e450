"""Turning validation failures into reasons a reporter (or an app developer) can act on."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def field_reasons(exc: ValidationError) -> list[dict[str, Any]]:
    """One entry per problem: the field path and a plain reason. Never echoes the input."""
    reasons = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = [str(p) for p in err["loc"]]
        field = ".".join(loc) if loc else "(body)"
        kind = err["type"]
        if kind == "missing":
            reason = "this field is required"
        elif kind == "extra_forbidden":
            reason = "unknown field; remove it"
        elif kind == "string_too_long":
            reason = f"too long: at most {err.get('ctx', {}).get('max_length')} characters"
        elif kind == "string_too_short":
            reason = f"too short: at least {err.get('ctx', {}).get('min_length')} characters"
        elif kind == "enum":
            reason = f"must be one of: {err.get('ctx', {}).get('expected')}"
        else:
            reason = err["msg"]
        reasons.append({"field": field, "reason": reason})
    return reasons
