"""``vigilctl config`` names the source of every setting and never prints a secret;
``--version`` comes from the one place the version lives."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import core
from core.config import Settings
from tests.operator_cli import MAIN, ROOT, cli_env, invoke

TOKEN = "tok-" + "s3cr3t" * 4
REDIS_PASSWORD = "hunter2pass"
WEBHOOK_SECRET = "T0001/B0002/webhooksecret"


def run_main(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAIN), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_each_setting_names_its_source_and_secrets_are_masked(
    tsettings: Settings, tmp_path: Path
) -> None:
    work = tmp_path / "install"
    work.mkdir()
    config_file = tmp_path / "vigil.toml"
    config_file.write_text('llm_model = "from-file"\nlog_level = "WARNING"\nchat_queue_limit = 7\n')
    (work / ".env").write_text(
        "VIGIL_LOG_LEVEL=ERROR\nVIGIL_LLM_MODEL=from-dotenv\n"
        f"VIGIL_HUEY_REDIS_URL=redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0\n"
    )
    env = cli_env(tsettings)  # VIGIL_ADMIN_TOKEN=test-token, VIGIL_PORT, dirs from the env
    env.update(
        VIGIL_CONFIG_FILE=str(config_file),
        VIGIL_LLM_MODEL="from-env",
        VIGIL_ADMIN_TOKEN=TOKEN,
        VIGIL_ALERT_WEBHOOK_URL=f"https://hooks.example.com/services/{WEBHOOK_SECRET}?k=v",
        VIGIL_LLM_BASE_URL="https://llm.example.com/v1?api_key=querysecret&region=eu",
    )
    result = run_main(work, env, "config", "--json")
    assert result.returncode == 0, result.stderr
    for secret in (TOKEN, REDIS_PASSWORD, "webhooksecret", "querysecret"):
        assert secret not in result.stdout
    report = json.loads(result.stdout)
    items = report["settings"]
    assert report["env_file"] == str(work / ".env")
    assert report["config_file"] == str(config_file)

    def seen(name: str) -> tuple[object, str]:
        return items[name]["value"], items[name]["source"]

    assert seen("VIGIL_LLM_MODEL") == ("from-env", "environment")  # env beats .env and file
    assert seen("VIGIL_LOG_LEVEL") == ("ERROR", ".env")  # .env beats the file
    assert seen("VIGIL_CHAT_QUEUE_LIMIT") == (7, "config file")
    assert seen("VIGIL_MAX_MESSAGE_CHARS") == (16000, "default")
    assert seen("VIGIL_ADMIN_TOKEN") == ("***", "environment")
    assert seen("VIGIL_HUEY_REDIS_URL") == ("redis://:***@127.0.0.1:6379/0", ".env")
    assert seen("VIGIL_LLM_API_KEY") == (None, "default")
    assert seen("VIGIL_ALERT_WEBHOOK_URL") == ("https://hooks.example.com/***", "environment")
    assert seen("VIGIL_LLM_BASE_URL") == (
        "https://llm.example.com/v1?api_key=***&region=***",
        "environment",
    )
    assert set(items) == {"VIGIL_" + name.upper() for name in Settings.model_fields}

    table = run_main(work, env, "config", "--changed")  # piped: one line per setting
    assert table.returncode == 0, table.stderr
    for secret in (TOKEN, REDIS_PASSWORD, "webhooksecret", "querysecret"):
        assert secret not in table.stdout
    lines = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if "│" in line}
    assert "config file" in lines["VIGIL_CHAT_QUEUE_LIMIT"]
    assert "VIGIL_MAX_MESSAGE_CHARS" not in lines


@pytest.mark.parametrize("given", [None, ""])  # unset, or set empty: the server generates one
def test_a_generated_admin_token_is_named_not_shown(
    tsettings: Settings, given: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from main import cli

    # In-process, settings read ./.env: never the checkout's own (an operator's token).
    monkeypatch.chdir(tsettings.data_dir.parent)
    tsettings.data_dir.mkdir(parents=True)
    tsettings.admin_token_file.write_text("generated-secret-value\n")
    env: dict[str, str | None] = {**cli_env(tsettings), "VIGIL_ADMIN_TOKEN": given}
    result = CliRunner().invoke(cli, ["config", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert "generated-secret-value" not in result.stdout
    token = json.loads(result.stdout)["settings"]["VIGIL_ADMIN_TOKEN"]
    assert token == {"value": "***", "source": f"generated ({tsettings.admin_token_file})"}


def test_a_bad_setting_is_one_line(tsettings: Settings) -> None:
    from typer.testing import CliRunner

    from main import cli

    env = cli_env(tsettings, port="99999")
    result = CliRunner().invoke(cli, ["config"], env=env)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("vigil: VIGIL_PORT:")


def test_config_lists_every_setting(tsettings: Settings) -> None:
    report = json.loads(invoke(tsettings, "config", "--json").stdout)
    assert report["settings"]["VIGIL_PORT"]["value"] == tsettings.port
    assert report["settings"]["VIGIL_PORT"]["source"] == "environment"


@pytest.mark.slow
def test_version_of_main_py_and_vigilctl(tmp_path: Path) -> None:
    import sqlite3

    python = sys.version.split()[0]
    expected = f"Vigil {core.__version__} (Python {python}, SQLite {sqlite3.sqlite_version})"
    direct = run_main(tmp_path, {"PATH": "/usr/bin:/bin"}, "--version")
    assert (direct.returncode, direct.stdout.strip()) == (0, expected), direct.stderr
    wrapper = subprocess.run(
        [str(ROOT / "scripts" / "vigilctl"), "--version"],
        env={"PATH": "/usr/bin:/bin", "VIGIL_VENV": str(Path(sys.executable).parents[1])},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrapper.returncode == 0, wrapper.stderr
    assert wrapper.stdout.startswith(f"Vigil {core.__version__} (Python ")


def test_the_version_lives_in_one_place() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "core.__version__"}
