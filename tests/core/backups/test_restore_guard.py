"""Restore never replaces the database under a running server, whatever path names it.

``restore NAME --target-path data/system.db --confirm`` used to replace a
running server's database (exit 0, -wal/-shm unlinked): the guard looked at
the PID file only when no --target-path was given. These run the real CLI
against a really running server (supervised, and ``serve`` by hand), with
the target spelled absolute, relative, through a symlink and a hard link.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.backups.backup import ServerRunning, create_backup
from core.backups.file_users import exclusive_lock, holders, same_file
from core.backups.restore import restore_live, restore_to_file
from core.config import Settings
from core.restarts import SUPERVISOR_LOCK
from monitoring.supervisor.state_file import StateFile
from tests.fake_llm import FakeLLM, free_port
from tests.operator_cli import rows, run_cli
from tests.processes import AUTH, MAIN, ROOT, VigilProcess, query, vigil, vigil_env, wait_for

HOLD_OPEN = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT count(*) FROM messages").fetchone()
print("open", flush=True)
time.sleep(120)
"""

HOLD_SUPERVISOR_LOCK = """
import sys, time
from pathlib import Path
from monitoring.supervisor.state_file import StateFile
assert StateFile(Path(sys.argv[1])).lock()
print("locked", flush=True)
time.sleep(120)
"""

# Leaves system.db with a -wal holding a committed row that is not in the main file.
CRASH_WITH_WAL = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA wal_autocheckpoint=0")
conn.execute("INSERT INTO messages (chat_id, role, content, created_at)"
             " VALUES ('local:wal', 'user', 'only in the wal', 1)")
os._exit(0)
"""


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAIN), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def chat(server: VigilProcess, text: str) -> None:
    response = server.client.post("/api/chats/g/messages", json={"text": text}, headers=AUTH)
    assert response.status_code == 200, response.text


def untouched(db: Path, identity: os.stat_result) -> None:
    now = os.stat(db)
    assert (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino)
    assert Path(f"{db}-wal").exists()  # the running server's WAL was not unlinked
    assert not list(db.parent.glob("*before-restore*"))


def refused_in_one_line(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vigil: the server is running (")
    assert reason in lines[0] and "scripts/stop.sh" in lines[0]


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.mark.slow
def test_restore_onto_a_supervised_server_is_refused_by_every_path(
    tmp_path: Path, llm: FakeLLM
) -> None:
    env = vigil_env(tmp_path, llm.url)
    with vigil(tmp_path, env, "supervise") as server:
        server.wait_live()
        chat(server, "before the snapshot")
        assert cli(env, tmp_path, "backup", "--name", "snap").returncode == 0
        chat(server, "after the snapshot")
        db = server.db
        identity = os.stat(db)
        link = tmp_path / "link.db"
        link.symlink_to(db)
        hard = tmp_path / "hard.db"
        os.link(db, hard)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        targets = [
            ["--target-path", str(db)],
            ["--target-path", "data/system.db"],  # relative to the caller's directory
            ["--target-path", str(link)],
            ["--target-path", str(hard)],
            [],
        ]
        for target in targets:
            result = cli(env, tmp_path, "restore", "snap", *target, "--confirm")
            refused_in_one_line(result, "its supervisor holds the lock")
            untouched(db, identity)
        # Relative to another directory, through vigilctl's VIGILCTL_CWD convention.
        result = cli(
            {**env, "VIGILCTL_CWD": str(elsewhere)},
            tmp_path,
            "restore",
            "snap",
            "--target-path",
            "../link.db",
            "--confirm",
        )
        refused_in_one_line(result, "its supervisor holds the lock")
        untouched(db, identity)
        assert link.is_symlink()

        chat(server, "still written after the refusals")
        contents = {r["content"] for r in query(db, "SELECT content FROM messages")}
        assert {"before the snapshot", "after the snapshot"} <= contents
        assert "still written after the refusals" in contents


@pytest.mark.slow
def test_a_server_started_by_hand_is_seen_holding_the_file(tmp_path: Path, llm: FakeLLM) -> None:
    """No supervisor, no PID file, and the CLI looks at another port: only the open file tells."""
    env = vigil_env(tmp_path, llm.url)
    with vigil(tmp_path, env, "serve") as server:
        server.wait_live()
        chat(server, "hello")
        assert cli(env, tmp_path, "backup", "--name", "snap").returncode == 0
        identity = os.stat(server.db)
        other_port = {**env, "VIGIL_PORT": str(free_port())}
        link = tmp_path / "link.db"
        link.symlink_to(Path("data") / "system.db")  # a relative symlink
        for target in (["--target-path", "link.db"], []):
            result = cli(other_port, tmp_path, "restore", "snap", *target, "--confirm")
            refused_in_one_line(result, f"pid {server.proc.pid} (")
            assert "main.py serve) has the database open" in result.stderr
            untouched(server.db, identity)
        # validate sees it running the same way: no FTS check that takes the write lock
        checks = json.loads(cli(other_port, tmp_path, "validate", "--json").stdout)["checks"]
        assert "fts_content" not in {c["name"] for c in checks}
        repair = cli(other_port, tmp_path, "validate", "--repair-fts")
        assert repair.returncode == 1 and "stop the server" in repair.stderr
        chat(server, "still here")


@pytest.mark.slow
def test_over_a_stopped_server_every_file_is_kept_aside(tmp_path: Path, llm: FakeLLM) -> None:
    env = vigil_env(tmp_path, llm.url)
    with vigil(tmp_path, env, "serve") as server:
        server.wait_live()
        chat(server, "in the snapshot")
        assert cli(env, tmp_path, "backup", "--name", "snap").returncode == 0
    db = tmp_path / "data" / "system.db"
    subprocess.run([sys.executable, "-c", CRASH_WITH_WAL, str(db)], check=True, timeout=30)
    assert Path(f"{db}-wal").stat().st_size > 0
    link = tmp_path / "link.db"
    link.symlink_to(db)

    without = cli(env, tmp_path, "restore", "snap", "--target-path", str(link))
    assert without.returncode == 2 and "add --confirm" in without.stderr

    result = cli(env, tmp_path, "restore", "snap", "--target-path", str(link), "--confirm")
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and same_file(link, db)
    kept = sorted(db.parent.glob("system.db.before-restore-*"))
    assert [p.name.removeprefix(kept[0].name) for p in kept] == ["", "-shm", "-wal"]
    # The kept set opens as the database it was, the row only in its WAL included.
    restored = {r["content"] for r in query(db, "SELECT content FROM messages")}
    previous = {r["content"] for r in query(kept[0], "SELECT content FROM messages")}
    assert "only in the wal" in previous and "only in the wal" not in restored
    assert "in the snapshot" in restored
    assert not list(tmp_path.glob(".*restore-tmp"))


@pytest.mark.slow
def test_a_process_holding_the_database_open_blocks_restore(filled: Settings) -> None:
    snap = create_backup(filled.db_path, filled.backups_dir, name="base")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(filled.db_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        assert holders(filled.db_path) == [holder.pid]
        with pytest.raises(ServerRunning, match=f"pid {holder.pid} "):
            restore_live(snap, filled.db_path, confirm=True)
        with pytest.raises(ServerRunning, match="is open in"):
            restore_to_file(snap, filled.db_path, overwrite=True)  # any file someone has open
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert not list(filled.data_dir.glob("*before-restore*"))
    wait_for(lambda: holders(filled.db_path) == [], 10, "the holder to be gone")
    assert restore_live(snap, filled.db_path, confirm=True).messages == 300


@pytest.mark.slow
def test_the_supervisor_lock_is_the_one_restore_looks_at(filled: Settings) -> None:
    snap = create_backup(filled.db_path, filled.backups_dir, name="base")
    lock = filled.data_dir / SUPERVISOR_LOCK
    # What a running supervisor holds for its whole life (monitoring's StateFile).
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SUPERVISOR_LOCK, str(filled.data_dir / "supervisor.json")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(ServerRunning, match="its supervisor holds the lock"):
            restore_live(snap, filled.db_path, confirm=True, supervisor_lock=lock)
        assert rows(filled.db_path, "SELECT count(*) FROM messages")[0][0] == 300
    finally:
        holder.kill()  # kill -9: the kernel drops the lock
        holder.wait(timeout=10)
    with exclusive_lock(lock) as free:
        assert free is True
        assert StateFile(filled.data_dir / "supervisor.json").lock() is False  # none starts now
    assert restore_live(snap, filled.db_path, confirm=True, supervisor_lock=lock).kept_aside


@pytest.mark.slow
def test_the_live_databases_wal_is_not_a_target(filled: Settings) -> None:
    assert run_cli(filled, "backup", "--name", "snap").returncode == 0
    db = filled.db_path
    subprocess.run([sys.executable, "-c", CRASH_WITH_WAL, str(db)], check=True, timeout=30)
    wal = Path(f"{db}-wal")
    before = wal.read_bytes()
    result = run_cli(filled, "restore", "snap", "--target-path", str(wal), "--confirm")
    assert result.returncode == 2, result.stderr
    assert "it is the live database's wal file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert wal.read_bytes() == before
