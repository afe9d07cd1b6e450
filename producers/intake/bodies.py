"""Reading request bodies safely: bounded in size, and JSON problems told to the client (400),
never turned into a 500."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

MAX_BODY_BYTES = 64 * 1024


class FieldProblem(BaseModel):
    field: str = Field(description="Dotted path of the field, e.g. `contact.phone`.")
    reason: str = Field(description="What is wrong, in words the sender can act on.")


class ErrorBody(BaseModel):
    """Every refusal of the JSON API has this shape; it never echoes what was sent."""

    error: str = Field(description="Why the request was refused.")
    fields: list[FieldProblem] | None = Field(
        default=None, description="With 422: one entry per invalid field."
    )
    retry: bool | None = Field(
        default=None, description="True when sending the same request again later may work."
    )


def json_error(
    status: int, error: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": error, **extra}, status_code=status, headers=headers)


async def read_body(request: Request) -> bytes | None:
    """The body, or None when it exceeds the limit (checked while reading, not after)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class BodyError(ValueError):
    """A request body that is not one JSON document; the message is safe to show the client."""


def parse_json(body: bytes) -> Any:
    """The JSON document in ``body``; anything that cannot be read as one is a BodyError.

    ``json.loads`` fails in more ways than JSONDecodeError: deep nesting raises RecursionError,
    an integer of more than 4,300 digits raises a plain ValueError (Python's int max-str-digits
    guard). Each must be the client's 400, never our 500. The reasons name the problem without
    quoting the body, which may hold a child's report.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(
            f"body is not valid UTF-8 JSON: invalid UTF-8 at byte {exc.start}"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BodyError(
            f"body is not valid UTF-8 JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BodyError("body is not valid UTF-8 JSON: nested too deeply") from None
    except ValueError:
        # The only other ValueError json.loads raises is for numbers too long to convert.
        raise BodyError("body is not valid UTF-8 JSON: a number has too many digits") from None
