"""What the operator sees: piped tables keep their width, chat ids in both forms,
signal exits by name, and the messages naming ``scripts/vigilctl``."""

from __future__ import annotations

import json

import pytest

from core.config import Settings
from tests.operator_cli import fill, run_cli


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
