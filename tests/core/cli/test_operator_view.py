"""What the operator sees: piped tables keep their width, chat ids in both forms,
signal exits by name, and the messages naming ``scripts/vigilctl``."""

from __future__ import annotations

import ast
import json
import sqlite3
from pathlib import Path

import pytest

from core.config import Settings
from core.sqlite import NewerSchema, migrate_sync
from tests.operator_cli import ROOT, fill, run_cli


@pytest.mark.slow
def test_piped_tables_are_not_folded_at_80_columns(tsettings: Settings) -> None:
    long_word = "w" * 150  # one unbreakable word, wider than any default terminal
    fill(tsettings.db_path, 2, chats=1)
    from core.database import connect_sync

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
