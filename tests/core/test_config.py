"""Settings: defaults, precedence env > .env > file, one-line errors, documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def run_env(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real entry point prints the validated settings the scripts use."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "shell-env"],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_defaults_need_no_file() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.host == "127.0.0.1"
    assert settings.port == 9000
    assert settings.llm_base_url == "http://127.0.0.1:11434/v1"
    assert settings.context_max_messages == 100
    assert settings.db_path == Path("data/system.db")


def test_precedence_env_over_dotenv_over_file(tmp_path: Path) -> None:
    config = tmp_path / "vigil.toml"
    config.write_text('port = 9101\nllm_model = "from-file"\nVIGIL_LOG_LEVEL = "debug"\n')
    (tmp_path / ".env").write_text("VIGIL_PORT=9102\n")
    result = run_env(tmp_path, {"VIGIL_CONFIG_FILE": str(config)})
    assert result.returncode == 0, result.stderr
    assert "VIGIL_URL=http://127.0.0.1:9102" in result.stdout
    result = run_env(tmp_path, {"VIGIL_CONFIG_FILE": str(config), "VIGIL_PORT": "9103"})
    assert "VIGIL_URL=http://127.0.0.1:9103" in result.stdout
    (tmp_path / ".env").unlink()
    result = run_env(tmp_path, {"VIGIL_CONFIG_FILE": str(config)})
    assert "VIGIL_URL=http://127.0.0.1:9101" in result.stdout


def test_json_config_file(tmp_path: Path) -> None:
    config = tmp_path / "vigil.json"
    config.write_text(json.dumps({"port": 9104, "telegram_allowed_users": ["1", "bob"]}))
    settings = Settings(_env_file=None, config_file=config)  # type: ignore[call-arg]
    assert settings.port == 9104
    assert settings.telegram_allowed_users == ["1", "bob"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"VIGIL_PORT": "abc"}, "VIGIL_PORT: Input should be a valid integer"),
        ({"VIGIL_PORT": "70000"}, "VIGIL_PORT: Input should be less than or equal to 65535"),
        ({"VIGIL_LLM_BASE_URL": "localhost:11434"}, "VIGIL_LLM_BASE_URL: must be an http(s) URL"),
        ({"VIGIL_RESTART_SCHEDULE": "25:00"}, "VIGIL_RESTART_SCHEDULE: must be a daily time"),
        ({"VIGIL_LOG_LEVEL": "chatty"}, "VIGIL_LOG_LEVEL: must be one of"),
        (
            {"VIGIL_GOVERNOR_CLEANUP_MB": "900", "VIGIL_GOVERNOR_HIGH_MB": "800"},
            "VIGIL_GOVERNOR_CLEANUP_MB (900) must not exceed VIGIL_GOVERNOR_HIGH_MB (800)",
        ),
        ({"VIGIL_CONFIG_FILE": "/nonexistent/vigil.toml"}, "VIGIL_CONFIG_FILE: cannot read"),
    ],
)
def test_bad_values_stop_with_one_line(tmp_path: Path, env: dict, expected: str) -> None:
    result = run_env(tmp_path, env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    config = tmp_path / "vigil.json"
    config.write_text('{"prot": 1}')
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(config_file=config)
    config.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON/TOML"):
        load_settings(config_file=config)


def test_secret_values_are_not_echoed_in_errors(tmp_path: Path) -> None:
    result = run_env(tmp_path, {"VIGIL_ADMIN_TOKEN": "", "VIGIL_TELEGRAM_API_ID": "s3cr3t-ish"})
    assert result.returncode == 2
    assert "VIGIL_TELEGRAM_API_ID" in result.stderr
    with pytest.raises(ConfigError) as info:
        load_settings(llm_api_key=["not", "a", "string"], _env_file=None)
    assert "VIGIL_LLM_API_KEY" in str(info.value)
    assert "not" not in str(info.value).split(":", 1)[1].replace("not a valid", "")


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`(VIGIL_[A-Z0-9_]+)`", doc))
    missing = [
        "VIGIL_" + name.upper()
        for name in Settings.model_fields
        if "VIGIL_" + name.upper() not in documented
    ]
    assert missing == [], f"add these to docs/configuration.md: {missing}"


def test_redis_password_counts_as_a_secret() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, huey_redis_url="redis://:hunter2pass@127.0.0.1:6379/0"
    )
    assert "hunter2pass" in settings.secrets()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nosuch"], "vigil: No such command 'nosuch'. (see: scripts/vigilctl --help)"),
        (["search"], "vigil: Missing argument 'query'. (see: scripts/vigilctl search --help)"),
        (["history", "--bogus"], "vigil: No such option: --bogus"),
    ],
)
def test_cli_usage_mistakes_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(expected)


@pytest.mark.slow
@pytest.mark.parametrize("url", ["redis://[x", "http://127.0.0.1:6379", "redis://h:99999/0"])
def test_bad_redis_url_is_one_line(tmp_path: Path, url: str) -> None:
    result = run_env(tmp_path, {"VIGIL_HUEY_REDIS_URL": url})
    assert result.returncode == 2
    assert result.stderr.startswith("vigil: VIGIL_HUEY_REDIS_URL:")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:9000"),
        ("0.0.0.0", "http://127.0.0.1:9000"),
        ("::1", "http://[::1]:9000"),
        ("::", "http://[::1]:9000"),
    ],
)
def test_base_url_brackets_ipv6_hosts(host: str, url: str) -> None:
    assert Settings(_env_file=None, host=host).base_url == url  # type: ignore[call-arg]


@pytest.mark.slow
@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/hook", "http://[::1/hook", "https:///x"])
def test_bad_webhook_url_is_one_line(tmp_path: Path, url: str) -> None:
    result = run_env(tmp_path, {"VIGIL_ALERT_WEBHOOK_URL": url})
    assert result.returncode == 2
    assert result.stderr.startswith("vigil: VIGIL_ALERT_WEBHOOK_URL:")
