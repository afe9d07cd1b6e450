"""Posting the web form as a browser does: first the page (for its signed token), then the post."""

from __future__ import annotations

import re
from typing import Any

from producers.intake.form_guard import FIELD

TOKEN = re.compile(rf'name="{FIELD}" value="([^"]*)"')


def form_token(client: Any, lang: str | None = None) -> str:
    page = client.get("/report", params={"lang": lang} if lang else None)
    assert page.status_code == 200, page.text
    found = TOKEN.search(page.text)
    assert found is not None, "the form page carries no token"
    return found.group(1)


def token_in(html: str) -> str:
    found = TOKEN.search(html)
    assert found is not None, "the page carries no form token"
    return found.group(1)


def post_form(client: Any, data: dict[str, str], lang: str | None = None, **kw: Any) -> Any:
    """``client``: a TestClient or an httpx.Client on the intake."""
    token = form_token(client, lang)
    path = f"/report?lang={lang}" if lang else "/report"
    return client.post(path, data={FIELD: token, **data}, **kw)
