"""Settings refuse the deploy examples' placeholder secrets, naming the variable only."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from escalate.settings import Settings


@pytest.mark.parametrize(
    "field",
    ["secret_key", "smtp_password", "previous_secret_keys", "telegram_bot_token", "smtp_username"],
)
def test_a_placeholder_is_refused_by_name(field: str) -> None:
    extra = {"smtp_username": "u", "smtp_password": "p"} if field.startswith("smtp") else {}
    if field == "telegram_bot_token":
        extra = {"telegram_secret_token": "t"}
    with pytest.raises(ValidationError) as refused:
        Settings(**{**extra, field: "change-me-long-random-secret"})
    assert f"ESCALATE_{field.upper()}" in str(refused.value)
    assert "long-random" not in str(refused.value)


def test_real_values_and_the_dev_default_pass() -> None:
    assert Settings(secret_key="3a1f0c9e-real").secret_key.get_secret_value() == "3a1f0c9e-real"
    assert Settings().secret_key.get_secret_value() == "dev-only-change-me"
