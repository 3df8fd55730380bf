"""``vigilctl db ...``, ``delete`` and ``run``: directly on a stopped server's files,
and through a real running server (LiveServer + the CLI as a real process)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core import dbops
from core.config import Settings
from core.runtime import Runtime
from tests.conftest import LiveServer
from tests.fake_llm import FakeLLM
from tests.operator_cli import MAIN, cli_env, fill, invoke, rows, run_cli

NO_USAGE = {"usage": 0, "usage_daily": 0}  # tables the deletion also covers


def _json(result: Any) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def _thin_out(db_path: Path) -> None:
    """Delete the older half of the messages: free pages for VACUUM to reclaim."""
    conn = sqlite3.connect(db_path)
    conn.execute("DELETE FROM messages WHERE id <= (SELECT max(id) / 2 FROM messages)")
    conn.commit()
    conn.close()


# --- stopped server: directly -------------------------------------------------------
def test_vacuum_directly_reclaims_free_pages_and_keeps_the_inode(filled: Settings) -> None:
    fill(filled.db_path, 3000)
    _thin_out(filled.db_path)
    inode = os.stat(filled.db_path).st_ino
    result = _json(invoke(filled, "db", "vacuum", "--json"))
    assert result["via"] == "directly (server stopped)"
    assert result["before"]["freelist_pages"] > 0
    assert result["after"]["freelist_pages"] == 0
    assert result["after"]["size_bytes"] < result["before"]["size_bytes"]
    assert result["after"]["wal_bytes"] == 0
    assert os.stat(filled.db_path).st_ino == inode  # the server's file watch sees no change
    assert rows(filled.db_path, "PRAGMA integrity_check")[0][0] == "ok"


@pytest.mark.parametrize("operation", ["analyze", "reindex", "checkpoint"])
def test_other_operations_directly(filled: Settings, operation: str) -> None:
    result = _json(invoke(filled, "db", operation, "--json"))
    assert result["operation"] == operation
    assert result["via"] == "directly (server stopped)"
    if operation == "analyze":
        assert rows(filled.db_path, "SELECT count(*) FROM sqlite_stat1")[0][0] > 0
    if operation == "checkpoint":
        assert result["checkpoint"]["busy"] == 0
        assert result["after"]["wal_bytes"] == 0


def test_bad_checkpoint_mode_is_one_line_and_exit_2(filled: Settings) -> None:
    result = invoke(filled, "db", "checkpoint", "--mode", "sideways")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "vigil: --mode must be passive, full, restart or truncate, got 'sideways'"
    )


def test_db_without_a_database_says_so(tsettings: Settings) -> None:
    result = invoke(tsettings, "db", "analyze")
    assert result.exit_code == 1
    assert "no database at" in result.stderr


def test_vacuum_refusal_names_the_figures() -> None:
    mb = 1_000_000
    assert dbops.vacuum_space_problem(100 * mb, 300 * mb, 300 * mb, same_disk=True) is None
    problem = dbops.vacuum_space_problem(100 * mb, 150 * mb, 150 * mb, same_disk=True)
    assert problem is not None
    assert "220.0 MB" in problem and "150.0 MB are free" in problem
    other = dbops.vacuum_space_problem(100 * mb, 500 * mb, 50 * mb, same_disk=False)
    assert other is not None and "temp directory" in other and "SQLITE_TMPDIR" in other


# --- run TASK --------------------------------------------------------------------------
def test_run_unknown_task_lists_the_names(filled: Settings) -> None:
    result = invoke(filled, "run", "defrag")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "vigil: unknown task 'defrag'; known: cleanup_old_tasks, backup, maintenance, vacuum, "
        "message_retention, refine_summaries"
    )


def test_run_records_the_run_like_a_scheduled_one(filled: Settings) -> None:
    result = _json(invoke(filled, "run", "maintenance", "--json"))
    assert result["task"] == "maintenance"
    assert result["result"]["checkpoint"]["busy"] == 0
    recorded = rows(
        filled.db_path,
        "SELECT name, status, duration_s, result FROM server_tasks WHERE task_id = ?",
        (result["task_id"],),
    )
    assert len(recorded) == 1
    assert recorded[0]["name"] == "maintenance" and recorded[0]["status"] == "completed"
    assert json.loads(recorded[0]["result"]) == result["result"]


def test_run_backup_writes_a_snapshot(filled: Settings) -> None:
    result = _json(invoke(filled, "run", "backup", "--json"))
    assert (filled.backups_dir / result["result"]["snapshot"]).exists() or any(
        p.name.startswith(result["result"]["snapshot"]) for p in filled.backups_dir.iterdir()
    )


def test_failed_run_is_one_line_exit_1_and_recorded(filled: Settings) -> None:
    if filled.backups_dir.is_dir():
        shutil.rmtree(filled.backups_dir)
    filled.backups_dir.write_text("a file where the backups directory should be")
    result = invoke(filled, "run", "backup")
    assert result.exit_code == 1
    assert result.stderr.startswith("vigil: task backup failed: ")
    assert len(result.stderr.strip().splitlines()) == 1
    failed = rows(filled.db_path, "SELECT status, error FROM server_tasks WHERE name = 'backup'")
    assert [r["status"] for r in failed] == ["failed"]


# --- delete: dry runs and bad input ----------------------------------------------------
def test_delete_needs_exactly_one_target(filled: Settings) -> None:
    for args in ([], ["--chat", "c0", "--user", "5"]):
        result = invoke(filled, "delete", *args)
        assert result.exit_code == 2
        assert result.stderr.strip() == "vigil: give exactly one of --chat ID or --user ID"


def test_delete_dry_run_counts_and_removes_nothing(filled: Settings) -> None:
    before = rows(filled.db_path, "SELECT count(*) FROM messages")[0][0]
    result = invoke(filled, "delete", "--chat", "c1")  # the short form of local:c1
    assert result.exit_code == 0, result.output
    assert "chat local:c1: would remove 100 message(s)" in result.stdout
    assert "dry run: nothing deleted; add --confirm to delete" in result.stdout
    assert rows(filled.db_path, "SELECT count(*) FROM messages")[0][0] == before
    assert rows(filled.db_path, "SELECT count(*) FROM deletions")[0][0] == 0


def test_delete_of_an_unknown_chat_or_a_bad_user_id(filled: Settings) -> None:
    result = invoke(filled, "delete", "--chat", "nobody", "--confirm")
    assert result.exit_code == 1
    assert result.stderr.strip() == "vigil: nothing stored for chat 'local:nobody'"
    result = invoke(filled, "delete", "--user", "@alice")
    assert result.exit_code == 2
    assert "--user takes a Telegram user id" in result.stderr
    result = invoke(filled, "delete", "--chat", "caf\udcff")  # argv bytes that were not UTF-8
    assert result.exit_code == 2
    assert result.stderr.strip() == "vigil: not a chat id: 'caf\\udcff' is not valid UTF-8"


# --- "no trace": a unique marker everywhere, then searched for in every file -------------
def _files_holding(marker: bytes, *dirs: Path, skip: Path) -> list[str]:
    found = []
    for top in dirs:
        for path in top.rglob("*"):
            if path.is_file() and skip not in path.parents and marker in path.read_bytes():
                found.append(str(path))
    return found


def _vocab(db_path: Path, term: str) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, messages_fts, row)")
        return int(
            conn.execute("SELECT count(*) FROM temp.v WHERE term = ?", (term,)).fetchone()[0]
        )
    finally:
        conn.close()


def _seed_marked_chat(conn: sqlite3.Connection, marker: str) -> None:
    """A Telegram chat with the marker in messages, two summaries and a ledger payload."""
    for i in range(40):
        conn.execute(
            "INSERT INTO messages (chat_id, role, content, created_at, external_id)"
            " VALUES ('tg:4242', ?, ?, ?, ?)",
            (
                "user" if i % 2 == 0 else "assistant",
                f"note {i}: {marker} secret",
                1.7e9 + i,
                str(i),
            ),
        )
    for version in (1, 2):  # the first summary's text stays behind in free space
        conn.execute(
            "UPDATE chats SET summary = ?, summary_upto_id = 10 WHERE id = 'tg:4242'",
            (f"- summary v{version} mentions {marker}",),
        )
    conn.execute(
        "INSERT INTO telegram_inbound (chat_id, message_id, sender_id, sent_at, received_at,"
        " status, settled_at, payload) VALUES (4242, 1, 4242, 1, 1, 'answered', 1, ?)",
        (json.dumps({"text": f"hello {marker}"}),),
    )
    conn.execute(
        "INSERT INTO telegram_refusals (chat_id, user_id, refused_at) VALUES (4242, 99, 1)"
    )


@pytest.fixture
def marker() -> str:
    return f"zq{uuid.uuid4().hex[:12]}mark"


def test_delete_directly_leaves_no_trace_in_any_file(filled: Settings, marker: str) -> None:
    conn = sqlite3.connect(filled.db_path, isolation_level=None)
    _seed_marked_chat(conn, marker)
    conn.close()
    result = invoke(filled, "delete", "--chat", "tg:4242", "--confirm", "--json")
    report = _json(result)
    assert report["messages"] == 40 and report["chats"] == ["tg:4242"]
    assert report["rows"] == {"telegram_inbound": 1, "telegram_refusals": 1, **NO_USAGE}
    assert report["vacuum"] == "done" and report["checkpoint"]["busy"] == 0
    skip = filled.backups_dir
    assert _files_holding(marker.encode(), filled.data_dir, filled.logs_dir, skip=skip) == []
    assert _vocab(filled.db_path, marker) == 0
    assert rows(filled.db_path, "SELECT count(*) FROM messages WHERE chat_id = 'local:c0'")[0][0]
    recorded = rows(filled.db_path, "SELECT deleted_by, scope, target, messages FROM deletions")
    assert [tuple(r)[1:] for r in recorded] == [("chat", "tg:4242", 40)]
    assert recorded[0]["deleted_by"].startswith("cli")


def test_delete_names_the_kept_copies_that_still_hold_the_chat(
    filled: Settings, marker: str
) -> None:
    # A restore keeps the replaced database as system.db.before-restore-T in data/:
    # the chat stays in it, and "no trace" must not be claimed silently.
    conn = sqlite3.connect(filled.db_path, isolation_level=None)
    _seed_marked_chat(conn, marker)
    conn.close()
    kept = filled.db_path.with_name(filled.db_path.name + ".before-restore-20260101-000000")
    kept.write_bytes(filled.db_path.read_bytes())
    result = invoke(filled, "delete", "--chat", "tg:4242", "--confirm")
    assert result.exit_code == 0, result.output
    skip = filled.backups_dir
    assert _files_holding(marker.encode(), filled.data_dir, filled.logs_dir, skip=skip) == [
        str(kept)
    ]
    told = [line for line in result.output.splitlines() if "older copies" in line]
    assert len(told) == 1 and str(kept) in told[0], result.output
    report = _json(invoke(filled, "delete", "--chat", "c0", "--confirm", "--json"))
    assert report["not_touched"] == [str(kept)]


def test_marker_survives_without_secure_delete_and_vacuum(filled: Settings, marker: str) -> None:
    """The control: a plain DELETE leaves the bytes in the file (so the test above can fail)."""
    conn = sqlite3.connect(filled.db_path, isolation_level=None)
    _seed_marked_chat(conn, marker)
    conn.execute("DELETE FROM messages WHERE chat_id = 'tg:4242'")
    conn.execute("DELETE FROM chats WHERE id = 'tg:4242'")
    conn.execute("DELETE FROM telegram_inbound")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert _files_holding(marker.encode(), filled.data_dir, skip=filled.backups_dir)


# --- through a running server -----------------------------------------------------------
@pytest.fixture
def big(settings: Settings) -> Settings:
    fill(settings.db_path, 30000, chats=5)
    _thin_out(settings.db_path)
    return settings


@pytest.fixture
def server(big: Settings, live_server_factory: Callable[..., LiveServer]) -> LiveServer:
    return live_server_factory(big)


class Turns:
    """Chat turns posted from a few threads until stopped; every status kept."""

    def __init__(self, server: LiveServer, threads: int = 3) -> None:
        self.server = server
        self.statuses: list[int] = []
        self.sent = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(f"busy{i}",), daemon=True)
            for i in range(threads)
        ]

    def _run(self, chat: str) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            status = self.server.chat(chat, f"turn {n}", timeout=60).status_code
            with self.lock:
                self.statuses.append(status)

    def __enter__(self) -> Turns:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


@pytest.mark.slow
def test_vacuum_through_the_running_server_while_turns_go_on(
    server: LiveServer, big: Settings
) -> None:
    inode = os.stat(big.db_path).st_ino
    with Turns(server) as turns:
        for operation in ("vacuum", "analyze", "reindex", "checkpoint"):
            result = run_cli(big, "db", operation, "--json")
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert report["via"] == "the server"
            if operation == "vacuum":
                assert report["before"]["freelist_pages"] > 0
                assert report["after"]["freelist_pages"] == 0
    assert turns.statuses and set(turns.statuses) == {200}, turns.statuses
    # Every acknowledged turn is in the database: a user and an assistant row each.
    stored = rows(big.db_path, "SELECT count(*) FROM messages WHERE chat_id LIKE 'local:busy%'")
    assert stored[0][0] == 2 * len(turns.statuses)
    assert os.stat(big.db_path).st_ino == inode
    health = server.client.get("/health").json()
    assert "database_replaced" not in json.dumps(health)
    assert (
        server.client.post("/api/chats/after/messages", json={"text": "still ok"}).status_code
        == 200
    )


@pytest.mark.slow
def test_admin_db_endpoint_needs_the_token_and_a_known_operation(server: LiveServer) -> None:
    import httpx

    anonymous = httpx.post(server.url + "/admin/db/vacuum", timeout=10)
    assert anonymous.status_code == 401
    unknown = server.client.post("/admin/db/defrag")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == (
        "unknown operation 'defrag'; known: vacuum, analyze, reindex, checkpoint"
    )
    bad_mode = server.client.post("/admin/db/checkpoint", params={"mode": "x"})
    assert bad_mode.status_code == 400
    for body, status in (
        (b'{"scope": "chat", "target": "x\\ud800"}', 422),  # a lone surrogate in JSON
        (b'{"scope": "everything", "target": "x"}', 422),
        (b'{"scope": "user", "target": "bob"}', 400),
    ):
        answer = server.client.post(
            "/admin/delete", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["message"]
    dry = server.client.post("/admin/delete", json={"scope": "chat", "target": "c0"})
    assert dry.status_code == 200 and dry.json()["dry_run"] is True


@pytest.mark.slow
def test_delete_through_the_running_server_leaves_no_trace(
    settings: Settings, live_server_factory: Callable[..., LiveServer], marker: str
) -> None:
    fill(settings.db_path, 500)
    conn = sqlite3.connect(settings.db_path, isolation_level=None)
    _seed_marked_chat(conn, marker)
    conn.close()
    server = live_server_factory(settings)
    # The API chat "alice" (local:alice) with the marker, in the cache and the index.
    assert server.chat("alice", f"remember {marker} please").status_code == 200

    async def cached(runtime: Runtime) -> list[str]:
        await runtime.memory.window("tg:4242")
        return [w.chat_id for w in runtime.memory.cached_chats()]

    assert {"tg:4242", "local:alice"} <= set(server.call(cached))
    for chat in ("tg:4242", "alice"):
        dry = run_cli(settings, "delete", "--chat", chat)
        assert dry.returncode == 0 and "would remove" in dry.stdout, dry.stderr
        done = run_cli(settings, "delete", "--chat", chat, "--confirm", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["dry_run"] is False

    async def windows(runtime: Runtime) -> list[int]:
        return [len((await runtime.memory.window(c)).turns) for c in ("tg:4242", "local:alice")]

    assert server.call(windows) == [0, 0]
    found = _files_holding(
        marker.encode(), settings.data_dir, settings.logs_dir, skip=settings.backups_dir
    )
    assert found == []
    assert _vocab(settings.db_path, marker) == 0
    assert server.client.get(f"/api/search?q={marker}").status_code in (200, 404)
    recorded = rows(settings.db_path, "SELECT scope, target FROM deletions ORDER BY id")
    assert [tuple(r) for r in recorded] == [("chat", "tg:4242"), ("chat", "local:alice")]
    # The rest is untouched and the server goes on.
    assert rows(settings.db_path, "SELECT count(*) FROM messages WHERE chat_id = 'local:c0'")[0][0]
    assert server.chat("alice", "a new start").status_code == 200


def test_delete_user_removes_private_chat_group_messages_and_ledger(
    filled: Settings, marker: str
) -> None:
    conn = sqlite3.connect(filled.db_path, isolation_level=None)
    _seed_marked_chat(conn, marker)  # tg:4242 is user 4242's private chat
    conn.execute(
        "INSERT INTO messages (chat_id, role, content, created_at, external_id)"
        " VALUES ('tg:-100', 'user', ?, 1, '7'), ('tg:-100', 'user', 'from someone else', 2, '8')",
        (f"group line {marker}",),
    )
    conn.execute(
        "UPDATE chats SET summary = ?, summary_upto_id = 999 WHERE id = 'tg:-100'", (f"- {marker}",)
    )
    conn.execute(
        "INSERT INTO telegram_inbound (chat_id, message_id, sender_id, sent_at, received_at,"
        " status, payload) VALUES (-100, 7, 4242, 1, 1, 'answered', ?),"
        " (-100, 8, 5, 1, 1, 'answered', '{}')",
        (json.dumps({"text": marker}),),
    )
    conn.close()
    report = _json(invoke(filled, "delete", "--user", "tg:4242", "--confirm", "--json"))
    assert report["messages"] == 41
    assert report["affected"] == ["tg:-100", "tg:4242"]
    assert report["summaries_cleared"] == ["tg:-100"]
    assert report["rows"] == {"telegram_inbound": 2, "telegram_refusals": 1, **NO_USAGE}
    left = rows(filled.db_path, "SELECT content FROM messages WHERE chat_id = 'tg:-100'")
    assert [r[0] for r in left] == ["from someone else"]
    assert _files_holding(marker.encode(), filled.data_dir, skip=filled.backups_dir) == []


@pytest.mark.slow
def test_turns_wait_for_a_long_maintenance_on_the_writer(server: LiveServer, big: Settings) -> None:
    """A VACUUM of a large file holds the writer for many seconds: turns queue, none fail."""
    import asyncio
    import time

    gate = threading.Event()

    async def hold(runtime: Runtime) -> Any:
        return await runtime.db.run_exclusive(lambda conn: gate.wait(60))

    assert server.loop is not None
    held = asyncio.run_coroutine_threadsafe(hold(server.runtime), server.loop)
    with Turns(server, threads=4) as turns:
        deadline = time.monotonic() + 30
        while server.runtime.admission.in_flight < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.runtime.admission.in_flight == 4  # all four wait on the writer
        assert server.client.get("/health/live").status_code == 200  # the loop is free
        time.sleep(3)  # a long VACUUM
        assert turns.statuses == []
        gate.set()
        assert held.result(30) is True
        while len(turns.statuses) < 8:
            time.sleep(0.05)
    assert set(turns.statuses) == {200}, turns.statuses
    stored = rows(big.db_path, "SELECT count(*) FROM messages WHERE chat_id LIKE 'local:busy%'")
    assert stored[0][0] == 2 * len(turns.statuses)


def test_a_server_that_runs_but_does_not_answer_is_refused(
    filled: Settings, fake_server_process: subprocess.Popen[bytes]
) -> None:
    filled.pid_file.write_text(f"{fake_server_process.pid}\n")
    before = rows(filled.db_path, "SELECT count(*) FROM messages")[0][0]
    for args in (["db", "vacuum"], ["delete", "--chat", "c0", "--confirm"]):
        result = invoke(filled, *args)
        assert result.exit_code == 1
        assert result.stderr.strip() == (
            f"vigil: Vigil (pid {fake_server_process.pid}) runs but its server does not answer "
            f"{filled.base_url}/health/live; try again when it answers, or stop it first "
            "(scripts/stop.sh)"
        )
    assert rows(filled.db_path, "SELECT count(*) FROM messages")[0][0] == before


def test_a_supervisor_without_a_pid_file_is_not_raced(filled: Settings) -> None:
    """Under systemd there is no PID file: the supervisor's lock says Vigil runs."""
    lock = filled.data_dir / "supervisor.json.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        before = rows(filled.db_path, "SELECT count(*) FROM messages")[0][0]
        result = invoke(filled, "db", "vacuum")
        assert result.exit_code == 1
        assert f"Vigil (pid {holder.pid}) runs but its server does not answer" in result.stderr
        assert rows(filled.db_path, "SELECT count(*) FROM messages")[0][0] == before
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_delete_waits_for_the_turn_running_in_that_chat(
    settings: Settings, live_server_factory: Callable[..., LiveServer], fake_llm: FakeLLM
) -> None:
    """Else the reply being written would be stored after the deletion."""
    import time

    fake_llm.reply = "one two three four five six seven eight"
    fake_llm.token_delay_s = 1.0
    server = live_server_factory(settings)
    statuses: list[int] = []
    turn = threading.Thread(
        target=lambda: statuses.append(server.chat("slow", "a long answer please").status_code)
    )
    turn.start()
    deadline = time.monotonic() + 20
    while not rows(settings.db_path, "SELECT 1 FROM messages WHERE chat_id = 'local:slow'"):
        assert time.monotonic() < deadline, "the user turn was never stored"
        time.sleep(0.02)
    done = run_cli(settings, "delete", "--chat", "slow", "--confirm", "--json")
    turn.join(30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["messages"] == 2  # the user turn and the whole reply
    assert statuses == [200]
    assert (
        rows(settings.db_path, "SELECT count(*) FROM messages WHERE chat_id = 'local:slow'")[0][0]
        == 0
    )
    assert rows(settings.db_path, "SELECT count(*) FROM chats WHERE id = 'local:slow'")[0][0] == 0


@pytest.mark.slow
def test_run_backup_waits_for_the_workers_heavy_task(filled: Settings) -> None:
    """A manual backup never overlaps a scheduled backup or vacuum (the worker's lock)."""
    import time

    from tasks.queue import HEAVY_LOCK, create_huey

    lock = create_huey(filled).lock_task(HEAVY_LOCK)
    lock.acquire()
    try:
        proc = subprocess.Popen(
            [sys.executable, str(MAIN), "run", "backup", "--json"],
            env=cli_env(filled),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        assert proc.stderr.readline().strip() == (
            "waiting for the running backup or vacuum to finish..."
        )
        time.sleep(1)
        assert proc.poll() is None  # still waiting
        assert not rows(filled.db_path, "SELECT 1 FROM server_tasks WHERE name = 'backup'")
    finally:
        lock.release()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["result"]["messages"] == 300


@pytest.mark.slow
def test_checkpoint_held_back_by_a_reader(filled: Settings) -> None:
    """TRUNCATE waits for a reader's old snapshot, then says so; PASSIVE never waits."""
    reader = sqlite3.connect(filled.db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM messages").fetchone()  # holds this snapshot
    fill(filled.db_path, 50)  # new pages in the WAL, after the reader's snapshot
    try:
        passive = invoke(filled, "db", "checkpoint", "--mode", "passive", "--json")
        assert passive.exit_code == 0, passive.output
        done = json.loads(passive.stdout)["checkpoint"]
        assert done["checkpointed"] < done["wal_pages"]  # only up to the reader's snapshot
        truncate = invoke(filled, "db", "checkpoint")
        assert truncate.exit_code == 1
        assert "busy (a reader or writer held it back)" in truncate.stdout
        assert truncate.stderr.strip() == (
            "vigil: the checkpoint was held back by a reader or writer; run it again later"
        )
    finally:
        reader.execute("COMMIT")
        reader.close()
    again = _json(invoke(filled, "db", "checkpoint", "--json"))
    assert again["checkpoint"]["busy"] == 0 and again["after"]["wal_bytes"] == 0
