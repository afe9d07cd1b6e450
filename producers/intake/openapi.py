"""The intake's OpenAPI document: bodies the routes parse themselves, described all the same.

``POST /v1/reports`` reads its body by hand (to answer a malformed one with a reason instead
of FastAPI's generic 422), so FastAPI cannot see its model. Its schema is written into the
document's components here, with every nested model as a component too, so that each ``$ref``
resolves (a schema pasted in with pydantic's own ``#/$defs/...`` references did not, and
schemathesis then skipped the endpoint).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

REF = "#/components/schemas/{model}"


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def add_components(app: FastAPI, *models: type[BaseModel]) -> None:
    """Make ``app.openapi()`` carry ``models`` (and the models they nest) as components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template=REF, mode="validation")
            for name, nested in schema.pop("$defs", {}).items():
                schemas.setdefault(name, nested)
            schemas.setdefault(model.__name__, schema)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
