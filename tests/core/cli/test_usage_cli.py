"""``main.py usage``: a Rich table, JSON, and one-line errors."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.database import connect_sync, migrate_sync
from tests.operator_cli import cli_env

PRICES = {"llm_price_input_per_1m": 1.0, "llm_price_output_per_1m": 4.0}


def invoke(settings: Settings, *args: str) -> Any:
    from typer.testing import CliRunner

    from main import cli

    env = cli_env(settings, **PRICES)
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def fill_usage(db_path: Path) -> None:
    now = time.time()
    conn = connect_sync(db_path)
    try:
        migrate_sync(conn)
        conn.executemany(
            "INSERT INTO usage (at, chat_id, user_id, kind, model, prompt_tokens,"
            " completion_tokens, estimated, latency_ms, ttft_ms, outcome)"
            " VALUES (?, ?, ?, ?, 'm', ?, ?, ?, 1.0, 0.5, 'ok')",
            [
                (now - 60, "local:a", "api:ada", "turn", 1000, 200, 0),
                (now - 50, "local:a", "api:ada", "summary", 300, 50, 1),
                (now - 40, "tg:42", "tg:42", "turn", 10, 5, 0),
                (now - 40 * 86400, "tg:42", "tg:42", "turn", 7, 7, 0),  # outside 30 days
            ],
        )
        conn.commit()
    finally:
        conn.close()


@pytest.fixture
def priced(tsettings: Settings) -> Settings:
    fill_usage(tsettings.db_path)
    return tsettings


def test_usage_json_per_user_and_day(priced: Settings) -> None:
    result = invoke(priced, "usage", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    users = {u["user"]: u for u in report["users"]}
    assert users["api:ada"]["total_tokens"] == 1550 and users["api:ada"]["requests"] == 2
    assert users["api:ada"]["estimated_requests"] == 1
    assert users["tg:42"]["total_tokens"] == 15  # the row of 40 days ago is outside
    assert report["total"]["cost"] == pytest.approx((1310 * 1 + 255 * 4) / 1e6)
    only = json.loads(invoke(priced, "usage", "--user", "tg:42", "--since", "90d", "--json").output)
    assert [u["total_tokens"] for u in only["users"]] == [29]
    chat = json.loads(invoke(priced, "usage", "--chat", "a", "--json").output)
    assert [u["user"] for u in chat["users"]] == ["api:ada"]


def test_usage_table_shows_tokens_and_cost(priced: Settings) -> None:
    result = invoke(priced, "usage")
    assert result.exit_code == 0, result.output
    assert "api:ada" in result.output and "1550" in result.output
    assert "cost" in result.output and "0.0023" in result.output  # 1310/1e6 + 1020/1e6


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--since", "soon"], "--since"),
        (["--user", "a\tb"], "--user"),
        (["--chat", "bad id!"], "--chat"),
    ],
)
def test_bad_options_get_one_line(priced: Settings, args: list[str], named: str) -> None:
    result = invoke(priced, "usage", *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vigil: ") and named in lines[0], lines


@pytest.mark.slow
def test_usage_as_a_real_process(priced: Settings) -> None:
    import subprocess
    import sys

    from tests.operator_cli import MAIN

    result = subprocess.run(
        [sys.executable, str(MAIN), "usage", "--json"],
        env=cli_env(priced),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total"]["requests"] == 3 and "cost" not in report["total"]  # no prices
