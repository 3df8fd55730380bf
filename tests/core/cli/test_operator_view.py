"""What the operator sees: piped tables keep their width, chat ids in both forms,
signal exits by name, and the messages naming ``scripts/vigilctl``."""

from __future__ import annotations

import ast
import json
import sqlite3
from pathlib import Path

import pytest

from core.config import Settings
from core.database import connect_sync
from core.sqlite import NewerSchema, migrate_sync
from tests.core.cli.test_commands import one_line_error
from tests.operator_cli import ROOT, fill, invoke, run_cli


@pytest.mark.slow
def test_piped_tables_are_not_folded_at_80_columns(tsettings: Settings) -> None:
    long_word = "w" * 150  # one unbreakable word, wider than any default terminal
    fill(tsettings.db_path, 2, chats=1)
    conn = connect_sync(tsettings.db_path)
    conn.execute("UPDATE messages SET content = ? WHERE id = 1", (f"{long_word} tail",))
    conn.close()
    result = run_cli(tsettings, "history", "--chat", "local:c0")  # stdout is a pipe
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(long_word[:99] in line for line in lines), result.stdout  # clipped at 100, one line
    assert max(len(line) for line in lines) > 100
    # and the JSON is unaffected
    rows = json.loads(run_cli(tsettings, "history", "--chat", "local:c0", "--json").stdout)
    assert rows[0]["content"].startswith(long_word)


def _message_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings (what users may read)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_no_operator_message_names_python_main_py() -> None:
    """``python main.py X`` fails with the system Python (no typer): messages name vigilctl."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for package in ("core", "monitoring", "tasks")
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, text in _message_strings(path)
        if "python main.py" in text
    ]
    found += [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in sorted((ROOT / "scripts").iterdir())
        if path.is_file()
        for line in path.read_text(encoding="utf-8").splitlines()
        if "python main.py" in line and not line.lstrip().startswith("#")
    ]
    assert found == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["nosuch"], "(see: scripts/vigilctl --help)"),
        (["history", "--limit", "x"], "(see: scripts/vigilctl history --help)"),
    ],
)
def test_usage_errors_name_vigilctl(tsettings: Settings, args: list[str], hint: str) -> None:
    result = run_cli(tsettings, *args)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(hint), result.stderr
    assert "python main.py" not in result.stderr


def test_a_newer_database_names_the_commands_that_help(tsettings: Settings) -> None:
    tsettings.data_dir.mkdir(parents=True)
    conn = sqlite3.connect(tsettings.db_path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(NewerSchema) as caught:
        migrate_sync(sqlite3.connect(tsettings.db_path))
    assert "scripts/vigilctl restore <name> --confirm" in str(caught.value)


# --- --chat accepts the API's form ----------------------------------------------------
def _add_message(settings: Settings, chat_id: str, text: str) -> None:
    conn = connect_sync(settings.db_path)
    conn.execute(
        "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
        " VALUES (?, 'user', ?, 3, 1.8e9)",
        (chat_id, text),
    )
    conn.close()


def test_a_bare_api_chat_name_is_its_local_id(filled: Settings) -> None:
    bare = json.loads(invoke(filled, "history", "--chat", "c1", "--limit", "3", "--json").stdout)
    full = json.loads(
        invoke(filled, "history", "--chat", "local:c1", "--limit", "3", "--json").stdout
    )
    assert bare == full and len(bare) == 3 and {t["chat_id"] for t in bare} == {"local:c1"}
    hits = json.loads(invoke(filled, "search", "apples", "--chat", "c1", "--json").stdout)
    assert hits and {h["chat_id"] for h in hits} == {"local:c1"}
    exported = invoke(filled, "export", "--chat", "c2").stdout.splitlines()
    assert len(exported) == 100
    summary = json.loads(
        invoke(filled, "summarize", "--chat", "c0", "--extractive", "--json").stdout
    )
    assert summary["chat_id"] == "local:c0"


@pytest.mark.parametrize("command", [("history",), ("search", "apples"), ("export",)])
def test_an_unknown_chat_is_an_error_with_a_hint_never_empty(
    filled: Settings, command: tuple[str, ...]
) -> None:
    result = invoke(filled, *command, "--chat", "alice")
    assert result.exit_code == 1
    one_line_error(result.stderr, "no chat with id 'alice'")
    assert "local:NAME" in result.stderr and "scripts/vigilctl history" in result.stderr
    assert result.stdout == ""


def test_a_bare_number_that_is_both_an_api_and_a_telegram_chat_is_ambiguous(
    filled: Settings,
) -> None:
    _add_message(filled, "local:123", "api side")
    _add_message(filled, "tg:123", "telegram side")
    result = invoke(filled, "history", "--chat", "123")
    assert result.exit_code == 2
    one_line_error(result.stderr, "local:123 or tg:123")
    telegram = json.loads(invoke(filled, "history", "--chat", "tg:123", "--json").stdout)
    assert [t["content"] for t in telegram] == ["telegram side"]


def test_history_without_chat_honours_limit_and_refuses_role(filled: Settings) -> None:
    chats = json.loads(invoke(filled, "history", "--limit", "2", "--json").stdout)
    assert len(chats) == 2
    result = invoke(filled, "history", "--role", "user")
    assert result.exit_code == 2
    one_line_error(result.stderr, "--role filters one chat's messages: add --chat")
