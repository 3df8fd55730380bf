"""CLI tables show chat text literally: brackets in messages are not Rich markup.

Llama models emit ``[/INST]``; users paste ``[/bold]``. Before the fix Rich
parsed data cells as markup: a closing tag crashed ``history``/``search``
(``MarkupError``, exit 1) and search snippets lost the ``[word]`` that marks
the match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from core.config import Settings
from core.database import connect_sync, migrate_sync
from main import cli
from tests.operator_cli import cli_env

TRICKY = (
    "[INST] say hi [/INST] hello [/bold] and [red]red[/red] plus [link=x]zebra[/link]",
    "a plain line about the zebra crossing",
)


def _chat_with(db_path: Path, texts: tuple[str, ...]) -> None:
    conn = connect_sync(db_path)
    try:
        migrate_sync(conn)
        for i, text in enumerate(texts):
            conn.execute(
                "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
                " VALUES ('local:brackets', 'user', ?, 5, ?)",
                (text, 1.7e9 + i),
            )
    finally:
        conn.close()


def _invoke(settings: Settings, *args: str) -> Any:
    env = {**cli_env(settings), "COLUMNS": "400"}  # one table row per line
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_history_shows_markup_like_text_literally(tsettings: Settings) -> None:
    _chat_with(tsettings.db_path, TRICKY)
    result = _invoke(tsettings, "history", "--chat", "local:brackets")
    assert result.exit_code == 0, result.output
    assert "MarkupError" not in result.output
    assert TRICKY[0] in result.stdout


def test_search_keeps_the_bracketed_match_and_survives_closing_tags(tsettings: Settings) -> None:
    _chat_with(tsettings.db_path, TRICKY)
    result = _invoke(tsettings, "search", "zebra")
    assert result.exit_code == 0, result.output
    assert "[zebra]" in result.stdout  # the match marker survives
    assert "[/bold] and [red]red[/red] plus [link=x][zebra][/link]" in result.stdout
    assert "crossing" in result.stdout


def test_a_query_that_looks_like_markup_is_a_plain_title(tsettings: Settings) -> None:
    _chat_with(tsettings.db_path, TRICKY)
    result = _invoke(tsettings, "search", "[/INST] hello")
    assert result.exit_code == 0, result.output
    assert "Search: [/INST] hello" in result.stdout
