"""Classification rules (placeholder: replaced by the classifier work)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ClassificationRules(BaseModel):
    model_config = ConfigDict(extra="allow")
