"""``preflight.database_problem``: what ``serve`` checks before uvicorn starts.

``python main.py serve`` started by hand (not through start.sh's preflight)
with a corrupt system.db printed nothing and exited 3; the traceback was only
in logs/system.log. ``database_problem`` is the read-only check it can call
first; the real-process test below runs ``serve`` itself.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from core.config import Settings
from core.database import connect_sync, migrate_sync
from core.preflight import _has_auth_key, database_problem
from core.schema import SCHEMA_VERSION
from tests.conftest import make_settings
from tests.fake_llm import dead_url
from tests.operator_cli import fill, run_cli


def _digests(settings: Settings) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(settings.data_dir.iterdir())
        if p.is_file()
    }


def _assert_names_the_way_out(problem: str | None, path: Path) -> None:
    assert problem is not None
    assert "\n" not in problem and str(path) in problem
    assert "scripts/vigilctl validate" in problem and "scripts/vigilctl restore" in problem


def test_a_healthy_or_missing_database_is_fine(tsettings: Settings) -> None:
    assert database_problem(tsettings) is None  # missing: the server creates it
    fill(tsettings.db_path, 20)
    assert database_problem(tsettings) is None
    assert database_problem(tsettings, quick=True) is None


def test_a_file_that_is_not_sqlite_is_named_and_left_untouched(tsettings: Settings) -> None:
    tsettings.data_dir.mkdir(parents=True)
    tsettings.db_path.write_bytes(os.urandom(8192))
    before = _digests(tsettings)
    _assert_names_the_way_out(database_problem(tsettings), tsettings.db_path)
    assert _digests(tsettings) == before


def test_a_smashed_schema_page_is_corrupt(tsettings: Settings) -> None:
    fill(tsettings.db_path, 20)
    conn = sqlite3.connect(tsettings.db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(tsettings.db_path.read_bytes())
    data[100:4096] = os.urandom(3996)  # keep the 100-byte header, destroy sqlite_master
    tsettings.db_path.write_bytes(bytes(data))
    _assert_names_the_way_out(database_problem(tsettings), tsettings.db_path)


def test_a_newer_schema_is_named(tsettings: Settings) -> None:
    conn = connect_sync(tsettings.db_path)
    migrate_sync(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    problem = database_problem(tsettings)
    assert problem is not None and f"schema version {SCHEMA_VERSION + 1}" in problem
    assert "upgrade Vigil or restore" in problem


def test_the_session_check_works_in_a_dir_with_hash_and_question_mark(tmp_path: Path) -> None:
    odd = tmp_path / "tg#x?y"
    odd.mkdir()
    session = odd / "telegram.session"
    conn = sqlite3.connect(session)
    conn.execute("CREATE TABLE sessions (auth_key BLOB)")
    conn.execute("INSERT INTO sessions VALUES (NULL)")
    conn.commit()
    conn.close()
    assert _has_auth_key(session) is False  # was True: it opened a stray empty "tg" file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tg#x?y"]


@pytest.mark.slow
def test_serve_by_hand_on_a_corrupt_database_says_so_on_the_console(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, llm_base_url=dead_url())
    settings.data_dir.mkdir(parents=True, mode=0o700)
    settings.db_path.write_bytes(os.urandom(8192))
    result = run_cli(settings, "serve")
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vigil: error: "), result.stderr
    assert "scripts/vigilctl validate" in lines[0]


def test_an_empty_database_file_is_refused_like_a_corrupt_one(tsettings: Settings) -> None:
    tsettings.data_dir.mkdir(parents=True)
    tsettings.db_path.touch()
    problem = database_problem(tsettings)
    _assert_names_the_way_out(problem, tsettings.db_path)
    assert problem is not None and "empty: 0 bytes" in problem
    assert tsettings.db_path.stat().st_size == 0


@pytest.mark.slow
@pytest.mark.parametrize("command", ["serve", "supervise"])
def test_serve_or_supervise_by_hand_on_an_empty_database_refuses_and_leaves_it(
    tmp_path: Path, command: str
) -> None:
    settings = make_settings(tmp_path, llm_base_url=dead_url())
    settings.data_dir.mkdir(parents=True, mode=0o700)
    settings.db_path.touch(mode=0o600)
    result = run_cli(settings, command)
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vigil: error: "), result.stderr
    assert "empty: 0 bytes" in lines[0] and "scripts/vigilctl restore" in lines[0]
    assert settings.db_path.stat().st_size == 0
    assert sorted(p.name for p in settings.data_dir.iterdir()) == ["system.db"]
    validate = run_cli(settings, "validate", "--json")
    assert validate.returncode == 1
    assert "is empty (0 bytes)" in validate.stdout
