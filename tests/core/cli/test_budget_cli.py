"""``vigilctl budget set|show|clear``: per-user overrides in ``system.db``."""

from __future__ import annotations

import json
import time
from typing import Any

from core.config import Settings
from core.database import connect_sync
from tests.operator_cli import fill, invoke, rows


def _ok(result: Any) -> str:
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def test_set_show_clear_round_trip(filled: Settings) -> None:
    conn = connect_sync(filled.db_path)
    conn.execute(
        "INSERT INTO usage (at, chat_id, user_id, kind, model, prompt_tokens,"
        " completion_tokens, outcome) VALUES (?, 'tg:123', 'tg:123', 'chat', 'm', 30, 12, 'ok')",
        (time.time(),),
    )
    conn.close()
    out = _ok(invoke(filled, "budget", "set", "123", "--day", "100", "--month", "5000"))
    assert out.startswith("set: tg:123 (override) day: 42 of 100, 58 left")
    _ok(invoke(filled, "budget", "set", "tg:123", "--day", "0"))  # month kept
    assert [
        tuple(r)
        for r in rows(filled.db_path, "SELECT user_id, day_tokens, month_tokens FROM budgets")
    ] == [("tg:123", 0, 5000)]
    view = json.loads(_ok(invoke(filled, "budget", "show", "tg:123", "--json")))
    assert view["day"] == {"limit": None, "spent": 42, "remaining": None}
    assert view["month"] == {"limit": 5000, "spent": 42, "remaining": 4958}
    _ok(invoke(filled, "budget", "set", "api:alice", "--month", "7"))
    listed = json.loads(_ok(invoke(filled, "budget", "show", "--json")))
    assert [v["user"] for v in listed["overrides"]] == ["api:alice", "tg:123"]
    assert listed["defaults"]["user_day"] == 0
    assert "api:alice (override)" in _ok(invoke(filled, "budget", "show"))
    assert "cleared" in _ok(invoke(filled, "budget", "clear", "api:alice"))
    missing = invoke(filled, "budget", "clear", "api:alice")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "vigil: api:alice has no budget override"


def test_bad_input_is_one_line(filled: Settings) -> None:
    for args in (
        ("set", "alice", "--day", "5"),
        ("set", "tg:1", "--day", "-5"),
        ("set", "tg:1"),
        ("set", "admin", "--day", "5"),
        ("show", "tg:abc"),
    ):
        result = invoke(filled, "budget", *args)
        assert result.exit_code != 0, args
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("vigil: "), result.stderr
        assert "Traceback" not in result.output


def test_no_database_is_one_line(tsettings: Settings) -> None:
    result = invoke(tsettings, "budget", "show")
    assert result.exit_code == 1
    assert "no database" in result.stderr


def test_show_works_on_an_empty_database(tsettings: Settings) -> None:
    fill(tsettings.db_path, 0)
    assert "no per-user overrides" in _ok(invoke(tsettings, "budget", "show"))
