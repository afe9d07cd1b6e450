"""Settings, YAML loading with line numbers, durations, and the reloading config holder."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from escalate.settings import DEFAULT_CONFIG_DIR, Settings, parse_api_keys
from schemas.directory import Directory
from schemas.durations import format_duration, parse_duration
from schemas.policy import Policy
from schemas.yaml_loader import ConfigError, load_yaml_model, parse_yaml_text
from stream_processors.config_holder import ConfigHolder


def test_api_keys_parse_and_refuse_bad_entries() -> None:
    assert parse_api_keys("app=k1, bot = k2 ,") == {"k1": "app", "k2": "bot"}
    with pytest.raises(ValueError, match="name=key"):
        parse_api_keys("justakey")


def test_settings_come_from_escalate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESCALATE_TOPIC_PREFIX", "x.")
    monkeypatch.setenv("ESCALATE_SMTP_PORT", "2525")
    settings = Settings()
    assert settings.topic_prefix == "x." and settings.smtp_port == 2525
    assert settings.database_url == "sqlite:///var/escalate.db"


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("24h", 86400), ("2d", 172800)]
)
def test_durations_round_trip(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(timedelta(seconds=seconds))) == timedelta(seconds=seconds)


def test_bad_duration_is_refused_with_its_line() -> None:
    text = (DEFAULT_CONFIG_DIR / "policy.yaml").read_text("utf-8")
    broken = text.replace("ack_within: 1h,", "ack_within: soon,")
    line = next(i for i, ln in enumerate(broken.splitlines(), 1) if "soon" in ln)
    with pytest.raises(ConfigError) as err:
        parse_yaml_text(broken, Policy, "policy.yaml")
    assert f"policy.yaml:{line}:" in str(err.value)
    assert "severities.high.ack_within" in str(err.value)


def test_unknown_tier_and_missing_severity_are_refused() -> None:
    with pytest.raises(ConfigError, match="notify"):
        parse_yaml_text(
            "severities:\n  critical: {notify: [mayor], ack_within: 1m}\n"
            "escalation_ladder: [school]\n",
            Policy,
            "p.yaml",
        )
    with pytest.raises(ConfigError, match="missing high"):
        parse_yaml_text(
            "severities:\n"
            "  critical: {notify: [school], ack_within: 1m}\n"
            "  medium: {notify: [school], ack_within: 1m}\n"
            "  low: {notify: [school], ack_within: 1m}\n"
            "escalation_ladder: [school]\n",
            Policy,
            "p.yaml",
        )


def test_directory_errors_name_the_line() -> None:
    text = (DEFAULT_CONFIG_DIR / "directory.yaml").read_text("utf-8")
    broken = text.replace("leadership_emails: [bgh@th-trangan.hoankiem.example]", "leadership: []")
    line = next(i for i, ln in enumerate(broken.splitlines(), 1) if "leadership: []" in ln)
    with pytest.raises(ConfigError) as err:
        parse_yaml_text(broken, Directory, "dir.yaml")
    assert f"dir.yaml:{line}:" in str(err.value)
    assert "leadership_emails" in str(err.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("severities:\n  critical: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"p.yaml:\d+: not valid YAML"):
        load_yaml_model(path, Policy)


def _copy_defaults(tmp_path: Path) -> tuple[Path, Path]:
    policy = tmp_path / "policy.yaml"
    directory = tmp_path / "directory.yaml"
    shutil.copy(DEFAULT_CONFIG_DIR / "policy.yaml", policy)
    shutil.copy(DEFAULT_CONFIG_DIR / "directory.yaml", directory)
    return policy, directory


def _bump(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_holder_applies_a_changed_policy_and_refuses_a_broken_one(tmp_path: Path) -> None:
    policy, directory = _copy_defaults(tmp_path)
    clock = [0.0]
    refused: list[str] = []
    holder = ConfigHolder(
        policy, directory, check_every_s=1.0, clock=lambda: clock[0], on_refused=refused.append
    )
    first = holder.current().policy_version
    policy.write_text(
        policy.read_text("utf-8").replace("ack_within: 4h", "ack_within: 2h"), encoding="utf-8"
    )
    _bump(policy)
    assert holder.current().policy_version == first, "not checked before the interval"
    clock[0] = 2.0
    second = holder.current()
    assert second.policy_version != first
    assert second.classifier.classifier.version == second.policy_version
    policy.write_text("severities: [this is wrong\n", encoding="utf-8")
    _bump(policy)
    clock[0] = 4.0
    assert holder.current().policy_version == second.policy_version
    assert refused and "not valid YAML" in refused[0]


def test_a_control_character_in_a_config_file_is_refused_with_its_line() -> None:
    from schemas.policy import Policy
    from schemas.yaml_loader import ConfigError, parse_yaml_text

    with pytest.raises(ConfigError, match=r"policy.yaml:2: .*U\+0016 is not allowed"):
        parse_yaml_text("version: x\nname: \x16\n", Policy, "policy.yaml")
