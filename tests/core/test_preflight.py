"""start.sh's pre-flight: stale WAL recovery, corrupt files refused untouched, schema."""

from __future__ import annotations

import hashlib
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest

from core.config import Settings
from core.database import connect_sync, migrate_sync
from core.preflight import EXIT_CORRUPT, PreflightError, release_locks, run_preflight
from core.schema import SCHEMA_VERSION
from tests.fake_llm import free_port

INSERT_MESSAGE = (
    "INSERT INTO messages (chat_id, role, content, created_at) VALUES (?, 'user', ?, ?)"
)


def _settings(tmp_path: Path, **values: object) -> Settings:
    values.setdefault("data_dir", tmp_path / "data")
    values.setdefault("port", free_port())  # never the default 9000 a real Vigil may hold
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _db_with_message(path: Path) -> None:
    conn = connect_sync(path)
    migrate_sync(conn)
    conn.execute(INSERT_MESSAGE, ("local:a", "x", 1))
    conn.close()


def test_a_new_install_gets_a_fresh_schema(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    report = run_preflight(settings)
    conn = sqlite3.connect(settings.db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert any("created" in line for line in report.lines)
    assert report.lines[0].startswith("telegram: not configured")


def test_a_stale_wal_left_by_a_killed_process_is_folded_back(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _db_with_message(settings.db_path)
    # Simulate kill -9: copy the files while a connection still holds an unmerged WAL.
    holder = connect_sync(settings.db_path)
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.execute(INSERT_MESSAGE, ("local:a", "y", 2))
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(f"{settings.db_path}{suffix}", crashed / f"system.db{suffix}")
    holder.close()

    report = run_preflight(_settings(tmp_path, data_dir=crashed))

    assert any("recovered stale system.db-wal" in line for line in report.lines)
    assert (
        not (crashed / "system.db-wal").exists() or (crashed / "system.db-wal").stat().st_size == 0
    )
    rows = sqlite3.connect(crashed / "system.db").execute("SELECT content FROM messages").fetchall()
    assert rows == [("x",), ("y",)]


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_a_corrupt_database_is_refused_and_left_untouched(tmp_path: Path, damage: str) -> None:
    settings = _settings(tmp_path)
    _db_with_message(settings.db_path)
    conn = sqlite3.connect(settings.db_path)
    with conn:  # a few pages worth of rows, so page damage hits a b-tree
        conn.executemany(INSERT_MESSAGE, [("local:b", "z" * 200 + str(i), 3) for i in range(300)])
    conn.close()
    sqlite3.connect(settings.db_path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    data = bytearray(settings.db_path.read_bytes())
    if damage == "garbage":
        data[:100] = b"\x13" * 100
    else:
        data[4096 * 2 : 4096 * 6] = b"\xa5" * (4096 * 4)
    settings.db_path.write_bytes(bytes(data))
    before = _digest(settings.db_path)

    with pytest.raises(PreflightError) as caught:
        run_preflight(settings)

    assert caught.value.exit_code == EXIT_CORRUPT
    message = str(caught.value)
    assert "scripts/vigilctl validate" in message and "scripts/vigilctl restore" in message
    assert _digest(settings.db_path) == before


def test_an_empty_database_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    settings.db_path.touch()
    with pytest.raises(PreflightError) as caught:
        run_preflight(settings)
    assert caught.value.exit_code == EXIT_CORRUPT
    assert "empty: 0 bytes" in str(caught.value)
    assert "scripts/vigilctl validate" in str(caught.value)
    assert settings.db_path.stat().st_size == 0


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _db_with_message(settings.db_path)
    sqlite3.connect(settings.db_path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}").close()
    with pytest.raises(PreflightError, match="newer than this Vigil"):
        run_preflight(settings)


def test_telegram_configured_without_session_says_how_to_log_in(tmp_path: Path) -> None:
    settings = _settings(tmp_path, telegram_api_id=1, telegram_api_hash="abcdef123456")
    report = run_preflight(settings)
    assert "telegram_login.sh" in report.lines[0]
    assert "abcdef123456" not in "\n".join(report.lines)


def test_release_locks_checkpoints_a_left_over_wal(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _db_with_message(settings.db_path)
    Path(f"{settings.db_path}-wal").write_bytes(b"")
    assert release_locks(settings) == ["system.db"]
    assert release_locks(_settings(tmp_path / "nothing")) == []


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PreflightError, match=f"cannot listen on 127.0.0.1:{port}.*VIGIL_PORT"):
            run_preflight(_settings(tmp_path, port=port))
    assert not (tmp_path / "data" / "system.db").exists()


def _session(settings: Settings, *, auth_key: bytes | None) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(settings.session_path)
    conn.execute("CREATE TABLE sessions (dc_id INTEGER, auth_key BLOB)")
    conn.execute("INSERT INTO sessions VALUES (2, ?)", (auth_key,))
    conn.commit()
    conn.close()
    settings.session_path.chmod(0o600)


def test_telegram_logged_in_is_reported_without_secrets(tmp_path: Path) -> None:
    settings = _settings(tmp_path, telegram_api_id=1, telegram_api_hash="abcdef123456")
    _session(settings, auth_key=b"k" * 256)
    line = run_preflight(settings).lines[0]
    assert line.startswith("telegram: logged in (user account, server production)")
    assert "abcdef123456" not in line and "WARNING" not in line


def test_telegram_session_without_auth_key_is_not_logged_in(tmp_path: Path) -> None:
    settings = _settings(tmp_path, telegram_api_id=1, telegram_api_hash="abcdef123456")
    _session(settings, auth_key=None)
    assert "telegram_login.sh" in run_preflight(settings).lines[0]
    bot = _settings(
        tmp_path, telegram_api_id=1, telegram_api_hash="abcdef123456", telegram_bot_token="1:x"
    )
    assert "logs the bot in at start" in run_preflight(bot).lines[0]


def test_a_session_made_for_another_telegram_server_is_refused(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        telegram_api_id=1,
        telegram_api_hash="abcdef123456",
        telegram_server="2@149.154.167.40:443",
    )
    _session(settings, auth_key=b"k" * 256)  # no marker: made for production
    with pytest.raises(PreflightError, match=r"telegram_logout\.sh"):
        run_preflight(settings)
    assert not settings.db_path.exists()  # refused before touching the database
