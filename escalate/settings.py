"""The one settings object of the whole pipeline.

Every component receives a ``Settings`` instance from the composition root; nothing below this
package reads the environment on its own, so tests can run several pipelines side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.common import Tier

PACKAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG_DIR = PACKAGE_ROOT / "defaults"


def parse_api_keys(raw: str) -> dict[str, str]:
    """Parse ``name=key,name2=key2`` into ``{key: name}`` so a request key maps to its client."""
    keys: dict[str, str] = {}
    for chunk in raw.split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        name, sep, key = chunk.partition("=")
        if not sep or not name.strip() or not key.strip():
            raise ValueError(
                f"ESCALATE_INTAKE_API_KEYS entry {chunk.split('=')[0]!r} must look like name=key"
            )
        _check_hashed("ESCALATE_INTAKE_API_KEYS", name.strip(), key.strip())
        keys[key.strip()] = name.strip()
    return keys


def _check_hashed(variable: str, name: str, key: str) -> None:
    from producers.intake.keys import digest_of

    try:
        digest_of(key)
    except ValueError as exc:
        raise ValueError(f"{variable} entry {name!r}: {exc}") from None


def parse_authority_keys(raw: str) -> dict[str, tuple[str, Tier]]:
    """Parse ``name=tier:key,…`` into ``{key: (name, tier)}``: each authority system acts for
    one organisation tier."""
    keys: dict[str, tuple[str, Tier]] = {}
    for chunk in raw.split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        name, sep, rest = chunk.partition("=")
        tier, sep2, key = rest.partition(":")
        if not sep or not sep2 or not name.strip() or not key.strip():
            raise ValueError(
                f"ESCALATE_AUTHORITY_API_KEYS entry {name.strip()!r} must look like name=tier:key"
            )
        _check_hashed("ESCALATE_AUTHORITY_API_KEYS", name.strip(), key.strip())
        try:
            keys[key.strip()] = (name.strip(), Tier(tier.strip()))
        except ValueError:
            raise ValueError(
                f"ESCALATE_AUTHORITY_API_KEYS entry {name.strip()!r}: unknown tier {tier.strip()!r}"
                f" (one of {', '.join(t.value for t in Tier)})"
            ) from None
    return keys


class Settings(BaseSettings):
    """Settings from ``ESCALATE_*`` environment variables (see README, 'Configuration')."""

    # Errors name the setting, never its value: several are secrets.
    model_config = SettingsConfigDict(
        env_prefix="ESCALATE_", extra="ignore", hide_input_in_errors=True
    )

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        description="host:port[,host:port]; unset means 'start the local broker'.",
    )
    topic_prefix: str = Field(default="", description="Prefix for every topic name.")
    database_url: str = "sqlite:///var/escalate.db"
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_sender: str = "escalate@localhost"
    smtp_timeout_s: float = 15.0
    smtp_username: str = Field(
        default="", description="Log in to the relay (AUTH) as this user; empty: no login."
    )
    smtp_password: SecretStr = SecretStr("")
    smtp_security: Literal["opportunistic", "starttls", "tls"] = Field(
        default="opportunistic",
        description="opportunistic: STARTTLS when the relay offers it; starttls: required; "
        "tls: TLS from the first byte (port 465).",
    )
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    intake_api_keys: str = ""
    directory_file: Path = DEFAULT_CONFIG_DIR / "directory.yaml"
    policy_file: Path = DEFAULT_CONFIG_DIR / "policy.yaml"
    model_file: Path | None = Field(
        default=DEFAULT_CONFIG_DIR / "model.npz",
        description="The learned second opinion (`escalate classify train`); empty: rules alone.",
    )
    model_sha256: str | None = Field(
        default=None,
        description="When set, a model file with any other sha256 is refused (rules alone).",
    )
    secret_key: SecretStr = SecretStr("dev-only-change-me")
    previous_secret_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated keys being rotated out; links they signed still work.",
    )
    var_dir: Path = Path("var")
    kafka_home: Path = Field(
        default=Path.home() / ".cache" / "escalate" / "kafka",
        description="Where the local broker's jars, config and data live (outside the repo).",
    )
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    app_id: str = "escalate"
    max_description_chars: int = 10_000
    notify_max_attempts: int = 5
    notify_backoff_s: float = 1.0
    metrics_port: int = 9400
    public_url: str | None = Field(
        default=None,
        description="Base of the links in mails; default http://{http_host}:{http_port}.",
    )
    authority_api_keys: str = ""
    instance_id: str | None = Field(
        default=None,
        description="Stable name of this worker (e.g. the pod name): static group membership.",
    )
    topic_partitions: int = Field(
        default=6,
        ge=1,
        description="Partitions of each topic created (dead letters: 1); the most processes "
        "of one component that can share the work. Set before the first start.",
    )
    topic_replication: int = Field(default=1, ge=1, description="Replicas of each topic created.")
    topic_min_insync_replicas: int | None = Field(
        default=None, ge=1, description="min.insync.replicas of each topic created."
    )
    intake_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Intake processes accepting on the one HTTP port (about one per core).",
    )
    intake_rate_limit_storage: str = Field(
        default="memory://",
        description="Where the status pages' per-address limits count (``limits`` storage URI, "
        "e.g. redis://host:6379); in memory, each intake process gets its share of the limit.",
    )
    processors_commit_every: int = Field(
        default=50,
        ge=1,
        description="Records per exactly-once transaction of the processors (or the interval).",
    )
    processors_commit_interval_s: float = Field(
        default=0.1,
        gt=0,
        description="Longest time a processed record waits for its transaction to commit.",
    )

    telegram_bot_token: SecretStr = Field(
        default=SecretStr(""),
        description="The Telegram bot's token (from @BotFather); with the secret token below, "
        "the intake serves POST /v1/bots/telegram.",
    )
    telegram_secret_token: SecretStr = Field(
        default=SecretStr(""),
        description="The secret_token given to setWebhook: Telegram sends it in "
        "X-Telegram-Bot-Api-Secret-Token, and updates without it are refused.",
    )
    telegram_api_base: str = Field(
        default="https://api.telegram.org",
        description="Where the bot's replies go (a local fake API in tests).",
    )

    @field_validator("model_file", "model_sha256", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    messenger_app_secret: SecretStr = Field(
        default=SecretStr(""),
        description="The Meta app's secret: Messenger signs webhook calls with it.",
    )
    messenger_page_token: SecretStr = Field(
        default=SecretStr(""), description="The page access token the bot replies with."
    )
    messenger_verify_token: SecretStr = Field(
        default=SecretStr(""),
        description="Any string, given to Meta when registering the webhook (GET challenge).",
    )
    messenger_api_base: str = "https://graph.facebook.com/v19.0"
    zalo_app_id: str = Field(default="", description="The Zalo app linked to the OA.")
    zalo_oa_secret: SecretStr = Field(
        default=SecretStr(""),
        description="The OA secret key (not the app secret): Zalo signs events with it.",
    )
    zalo_access_token: SecretStr = Field(
        default=SecretStr(""), description="The OA access token the bot replies with."
    )
    zalo_api_base: str = "https://openapi.zalo.me"

    @model_validator(mode="after")
    def _no_placeholders(self) -> Settings:
        """The deploy examples (deploy/compose/.env.example) fill secrets with ``change-me…``:
        a copy started without editing would sign links with a key anyone can read."""
        for name, value in self.__dict__.items():
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if isinstance(text, str) and text.lower().startswith("change-me"):
                raise ValueError(
                    f"ESCALATE_{name.upper()} is still the example's placeholder: set a real value"
                )
        return self

    @model_validator(mode="after")
    def _bots_complete(self) -> Settings:
        """A bot's settings come all together: a webhook without its secret would take
        messages from anyone in the platform's name. So do the relay's login and password."""
        groups = {
            "ESCALATE_TELEGRAM_BOT_TOKEN, ESCALATE_TELEGRAM_SECRET_TOKEN": (
                self.telegram_bot_token.get_secret_value(),
                self.telegram_secret_token.get_secret_value(),
            ),
            "ESCALATE_MESSENGER_APP_SECRET, ESCALATE_MESSENGER_PAGE_TOKEN, "
            "ESCALATE_MESSENGER_VERIFY_TOKEN": (
                self.messenger_app_secret.get_secret_value(),
                self.messenger_page_token.get_secret_value(),
                self.messenger_verify_token.get_secret_value(),
            ),
            "ESCALATE_SMTP_USERNAME, ESCALATE_SMTP_PASSWORD": (
                self.smtp_username,
                self.smtp_password.get_secret_value(),
            ),
            "ESCALATE_ZALO_APP_ID, ESCALATE_ZALO_OA_SECRET, ESCALATE_ZALO_ACCESS_TOKEN": (
                self.zalo_app_id,
                self.zalo_oa_secret.get_secret_value(),
                self.zalo_access_token.get_secret_value(),
            ),
        }
        for names, values in groups.items():
            if any(values) and not all(values):
                raise ValueError(f"{names} go together: set all of them or none")
        return self

    @field_validator("intake_api_keys")
    @classmethod
    def _check_keys(cls, value: str) -> str:
        parse_api_keys(value)
        return value

    @field_validator("authority_api_keys")
    @classmethod
    def _check_authority_keys(cls, value: str) -> str:
        parse_authority_keys(value)
        return value

    @property
    def api_keys(self) -> dict[str, str]:
        return parse_api_keys(self.intake_api_keys)

    @property
    def authority_keys(self) -> dict[str, tuple[str, Tier]]:
        return parse_authority_keys(self.authority_api_keys)

    @property
    def previous_keys(self) -> tuple[str, ...]:
        raw = self.previous_secret_keys.get_secret_value()
        return tuple(k.strip() for k in raw.split(",") if k.strip())

    @property
    def links_base_url(self) -> str:
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    @property
    def outbox_dir(self) -> Path:
        return self.var_dir / "outbox"
