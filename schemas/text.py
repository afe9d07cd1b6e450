"""Text helpers every stage shares."""

from __future__ import annotations

import unicodedata


def fold(text: str) -> str:
    """Remove every diacritic and map đ to d: the form of text typed without accents."""
    decomposed = unicodedata.normalize("NFD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return stripped.replace("đ", "d").replace("Đ", "D")
