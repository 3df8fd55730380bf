"""The operator CLI: bad inputs give one clear line and a non-zero exit.

The restore and missing-input cases run ``python main.py`` as a real process; the rest
use Typer's CliRunner on main.py's app (same code, faster).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from core.config import Settings
from core.database import connect_sync
from main import cli
from tests.operator_cli import cli_env, fill, invoke, rows, run_cli


def one_line_error(text: str, expected: str) -> None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("vigil: ") and expected in lines[0], text
    assert "Traceback" not in text


# --- real processes -----------------------------------------------------------------
@pytest.mark.slow
def test_unknown_chat_and_missing_backup(filled: Settings) -> None:
    result = run_cli(filled, "history", "--chat", "local:nobody")
    assert result.returncode == 1
    one_line_error(result.stderr, "no chat with id 'local:nobody'")

    result = run_cli(filled, "restore", "snapshot_19990101_000000", "--confirm")
    assert result.returncode == 1
    one_line_error(result.stderr, "no snapshot named 'snapshot_19990101_000000'")
    assert "`scripts/vigilctl snapshots`" in result.stderr  # a command that runs as written


@pytest.mark.slow
def test_restore_without_confirm(filled: Settings) -> None:
    assert run_cli(filled, "backup", "--name", "safe").returncode == 0
    result = run_cli(filled, "restore", "safe")
    assert result.returncode == 2
    one_line_error(result.stderr, "add --confirm")
    assert not list(filled.data_dir.glob("system.db.before-restore-*"))


@pytest.mark.slow
def test_restore_to_an_unwritable_target(filled: Settings, tmp_path: Path) -> None:
    assert run_cli(filled, "backup", "--name", "safe").returncode == 0
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    for target, expected in (
        (a_file / "inside.db", "is not a directory"),
        (tmp_path, "is a directory"),
        (tmp_path / "missing" / "x.db", "does not exist"),
    ):
        result = run_cli(filled, "restore", "safe", "--target-path", str(target))
        assert result.returncode == 2, result.stderr
        one_line_error(result.stderr, expected)


@pytest.mark.slow
def test_restore_to_a_target_path_writes_a_plain_database(filled: Settings, tmp_path: Path) -> None:
    assert run_cli(filled, "backup", "--name", "safe").returncode == 0
    target = tmp_path / "copy.db"
    result = run_cli(filled, "restore", "safe", "--target-path", str(target), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["messages"] == 300
    assert rows(target, "SELECT count(*) FROM messages")[0][0] == 300


# --- CliRunner ------------------------------------------------------------------------
def test_backup_snapshots_and_cleanup_in_json(filled: Settings) -> None:
    first = invoke(filled, "backup", "--name", "a", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["messages"] == 300
    assert invoke(filled, "backup", "--name", "b").exit_code == 0
    listed = json.loads(invoke(filled, "snapshots", "--json", "--verify").stdout)
    assert [s["name"] for s in listed] == ["b", "a"]
    assert {s["verify"] for s in listed} == {"ok"}
    dry = json.loads(invoke(filled, "cleanup", "--keep", "1", "--dry-run", "--json").stdout)
    assert dry["snapshots_removed"] == ["a"]
    assert invoke(filled, "cleanup", "--keep", "1").exit_code == 0
    assert [s["name"] for s in json.loads(invoke(filled, "snapshots", "--json").stdout)] == ["b"]


def test_snapshots_verify_fails_on_a_damaged_file(filled: Settings) -> None:
    assert invoke(filled, "backup", "--name", "a").exit_code == 0
    path = filled.backups_dir / "a.db.gz"
    path.write_bytes(path.read_bytes()[:-20])
    result = invoke(filled, "snapshots", "--verify")
    assert result.exit_code == 1
    assert "damaged" in result.stdout


def test_history_search_export_and_summarize(filled: Settings) -> None:
    chats = json.loads(invoke(filled, "history", "--json").stdout)
    assert {c["id"] for c in chats} == {"local:c0", "local:c1", "local:c2"}
    turns = json.loads(
        invoke(filled, "history", "--chat", "local:c1", "--limit", "4", "--json").stdout
    )
    assert len(turns) == 4 and turns[0]["id"] < turns[-1]["id"]  # oldest first on screen
    hits = json.loads(invoke(filled, "search", "message 42", "--json").stdout)
    assert hits and hits[0]["content"].startswith("message 42 ")
    tricky = invoke(filled, "search", 'apples" (pears*', "--limit", "2", "--json")
    assert tricky.exit_code == 0 and len(json.loads(tricky.stdout)) == 2
    exported = invoke(filled, "export", "--chat", "local:c2").stdout.splitlines()
    assert len(exported) == 100 and json.loads(exported[0])["chat_id"] == "local:c2"
    summary = json.loads(
        invoke(filled, "summarize", "--chat", "local:c0", "--count", "3", "--json").stdout
    )
    assert summary["messages"] == 3 and summary["source"].startswith("extractive")


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (("history", "--chat", "local:c1", "--role", "robot"), 2, "--role must be one of"),
        (("history", "--limit", "0"), 2, "--limit must be between"),
        (("search", "!!! ???"), 2, "no searchable words"),
        (("summarize", "--chat", "local:zz"), 1, "no chat with id 'local:zz'"),
        (("export", "--chat", "local:zz"), 1, "no chat with id 'local:zz'"),
        (("backup", "--name", "../../etc"), 2, "invalid snapshot name"),
        (("cleanup", "--keep", "-1"), 2, "--keep must be 0 or more"),
        (("validate", "--db", "/nonexistent/x.db"), 1, ""),
    ],
)
def test_bad_inputs_are_one_line_errors(
    filled: Settings, args: tuple[str, ...], code: int, expected: str
) -> None:
    result = invoke(filled, *args)
    assert result.exit_code == code, result.output
    if expected:
        one_line_error(result.stderr, expected)
    assert "Traceback" not in result.output


def test_commands_on_a_missing_database_say_so(tsettings: Settings) -> None:
    for args in (("history",), ("search", "x"), ("backup",), ("export",)):
        result = invoke(tsettings, *args)
        assert result.exit_code == 1
        one_line_error(result.stderr, "no database at")


def test_validate_exit_codes(filled: Settings) -> None:
    assert invoke(filled, "validate").exit_code == 0
    conn = connect_sync(filled.db_path)
    conn.execute(
        "INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', 1, ?)",
        (rows(filled.db_path, "SELECT content FROM messages WHERE id = 1")[0][0],),
    )
    conn.close()
    broken = invoke(filled, "validate", "--json")
    assert broken.exit_code == 1
    report = json.loads(broken.stdout)
    assert report["ok"] is False
    assert {c["name"]: c["status"] for c in report["checks"]}["fts"] == "fail"
    assert invoke(filled, "validate", "--repair-fts").exit_code == 0


def test_status_against_a_live_server(settings: Settings, live_server: Any) -> None:
    fill(settings.db_path, 10)
    result = invoke(settings, "status", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["server"]["state"] == "running"
    assert report["server"]["health"]["status"] in ("healthy", "degraded")
    assert report["database"]["messages"] >= 10
    assert report["queue"]["pending"] == 0 and report["queue"]["backend"] == "sqlite"
    table = invoke(settings, "status")
    assert table.exit_code == 0 and "Vigil status" in table.stdout


def test_status_with_nothing_running(tsettings: Settings) -> None:
    report = json.loads(invoke(tsettings, "status", "--json").stdout)
    assert report["server"]["state"] == "not running"
    assert report["database"]["error"] == "no database file"
    assert report["backups"]["count"] == 0


def test_a_server_without_pid_file_still_blocks_live_restore(
    settings: Settings, live_server: Any
) -> None:
    fill(settings.db_path, 10)
    assert invoke(settings, "backup", "--name", "x").exit_code == 0
    result = invoke(settings, "restore", "x", "--confirm")
    assert result.exit_code == 1
    one_line_error(result.stderr, "it answers on its port")
    # validate reads only while it runs: FTS5's own check (write lock) is left out
    checks = json.loads(invoke(settings, "validate", "--json").stdout)["checks"]
    assert "fts_content" not in {c["name"] for c in checks}
    assert invoke(settings, "validate", "--repair-fts").exit_code == 1


def test_status_survives_an_unreadable_database(tsettings: Settings) -> None:
    tsettings.data_dir.mkdir(parents=True)
    tsettings.db_path.write_bytes(b"not a database" * 1000)
    result = invoke(tsettings, "status", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["database"]["error"].startswith("unreadable:")
    assert report["queue"]["pending"] == 0
    history = invoke(tsettings, "history")
    assert history.exit_code == 1
    one_line_error(history.stderr, "database error")


def test_summarize_with_a_model_that_answers(settings: Settings, fake_llm: Any) -> None:
    fake_llm.reply = "They compared apples and pears."
    fill(settings.db_path, 40)
    result = invoke(settings, "summarize", "--count", "10", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source"] == "model"
    assert summary["summary"] == "They compared apples and pears."
    assert summary["chat_id"] == "local:c0"  # the latest active chat (message 39)


def test_export_to_a_file_refuses_to_overwrite_without_force(
    filled: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "all.jsonl"
    assert invoke(filled, "export", "-o", str(out)).exit_code == 0
    assert len(out.read_text().splitlines()) == 300
    again = invoke(filled, "export", "-o", str(out))
    assert again.exit_code == 2
    one_line_error(again.stderr, "already exists; add --force")
    assert invoke(filled, "export", "-o", str(out), "--force", "--chat", "local:c0").exit_code == 0
    assert len(out.read_text().splitlines()) == 100


def test_cleanup_applies_message_retention_when_configured(filled: Settings) -> None:
    fill(filled.db_path, 20, chats=1, start=time.time())  # recent ones survive
    env = cli_env(filled, message_retention_days="30")
    result = CliRunner().invoke(cli, ["cleanup", "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["messages_removed"] == 300
    assert rows(filled.db_path, "SELECT count(*) FROM messages")[0][0] == 20


@pytest.mark.parametrize("content", ["[]", '{"pid": 1, "children": []}'])
def test_status_survives_a_supervisor_json_of_the_wrong_shape(
    tsettings: Settings, content: str
) -> None:
    tsettings.data_dir.mkdir(parents=True)
    (tsettings.data_dir / "supervisor.json").write_text(content)
    result = invoke(tsettings, "status", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["supervisor"]["running"] is False and report["supervisor"]["children"] == {}
    table = invoke(tsettings, "status")
    assert table.exit_code == 0 and "unexpected error" not in table.output
