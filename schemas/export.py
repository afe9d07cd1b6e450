"""Writes a JSON Schema file per contract so clients in other languages can validate."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.directory import Directory
from schemas.policy import Policy
from schemas.reports import ReportIn
from schemas.topics import ALL_TOPICS
from schemas.webhooks import WebhookEvent


def schema_documents() -> dict[str, dict[str, object]]:
    models: dict[str, type[BaseModel]] = {
        "report-in": ReportIn,
        "directory": Directory,
        "policy": Policy,
        "webhook-event": WebhookEvent,
    }
    for spec in ALL_TOPICS:
        models[spec.base_name] = spec.model
    docs = {}
    for name, model in models.items():
        doc = model.model_json_schema()
        doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        docs[f"{name}.schema.json"] = doc
    return docs


def render(doc: dict[str, object]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def export_json_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, doc in schema_documents().items():
        path = out_dir / filename
        path.write_text(render(doc), encoding="utf-8")
        written.append(path)
    return written
