"""Acknowledged = committed, with real processes.

- The real server under concurrent chat load (with resets), killed with
  SIGKILL again and again, then the whole tree: every message that got an
  HTTP 200 is in the database exactly once, and ``validate`` says ok.
- ``system.db`` replaced or deleted under the running server: ``/health``
  unhealthy with ``database_replaced``, writes refused, and the server back
  on the file now at the path after a governed restart.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_llm import FakeLLM
from tests.processes import (
    AUTH,
    MAIN,
    Chatter,
    StreamedTurn,
    VigilProcess,
    query,
    vigil,
    vigil_env,
    wait_for,
)

pytestmark = pytest.mark.slow


def server_pid(sup: VigilProcess) -> int | None:
    body = sup._live()
    return int(body["pid"]) if body else None


def user_messages(db: Path) -> list[str]:
    rows = query(db, "SELECT content FROM messages WHERE role = 'user'")
    return [r["content"] for r in rows]


def test_kill_9_under_load_loses_no_acknowledged_message(tmp_path: Path, fake_llm: FakeLLM) -> None:
    env = vigil_env(tmp_path, fake_llm.url, supervisor_flap_max=50, context_max_messages=6)
    stop = threading.Event()
    with vigil(tmp_path, env, "supervise", "--no-worker") as sup:
        sup.wait_live()
        chatters = [Chatter(sup.url, f"load{i}", stop, resets=(i % 2 == 0)) for i in range(6)]
        for chatter in chatters:
            chatter.start()
        kills = 0
        try:
            for _ in range(5):
                time.sleep(1.5)
                pid = wait_for(lambda: server_pid(sup), 20, "the server to answer")
                os.kill(pid, signal.SIGKILL)
                kills += 1
                wait_for(lambda p=pid: (server_pid(sup) or p) != p, 20, "a new server")
            time.sleep(1.0)
        finally:
            stop.set()
            for chatter in chatters:
                chatter.join(15)
        # Now the whole tree at once: supervisor and server.
        sup.kill_tree()
    acked = [text for c in chatters for text in c.acked]
    assert kills == 5
    assert len(acked) > 100, [c.errors for c in chatters]
    assert sum(c.resets_done for c in chatters) > 3
    stored = user_messages(tmp_path / "data" / "system.db")
    counts: dict[str, int] = {}
    for text in stored:
        counts[text] = counts.get(text, 0) + 1
    missing = [t for t in acked if t not in counts]
    duplicates = {t: n for t, n in counts.items() if n > 1}
    assert missing == []
    assert duplicates == {}
    validate = subprocess.run(
        [sys.executable, str(MAIN), "validate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr


def _copy_with_marker(db: Path, marker: str) -> Path:
    """A consistent copy of the live database with one more chat in it."""
    copy = db.with_name("replacement.db")
    src = sqlite3.connect(db)
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    dst.execute(
        "INSERT INTO chats (id, channel, created_at, updated_at) VALUES (?, 'local', 0, 0)",
        (marker,),
    )
    dst.execute(
        "INSERT INTO messages (chat_id, role, content, tokens, created_at)"
        " VALUES (?, 'user', 'from the replacement', 3, 0)",
        (marker,),
    )
    dst.commit()
    dst.execute("PRAGMA journal_mode=DELETE")
    dst.close()
    os.chmod(copy, 0o600)
    return copy


def _unhealthy_replaced(sup: VigilProcess) -> dict[str, Any] | None:
    try:
        response = sup.client.get("/health", timeout=2.0)
    except httpx.HTTPError:
        return None
    body = response.json()
    if response.status_code == 503 and "database_replaced" in body.get("reasons", []):
        return dict(body)
    return None


@pytest.mark.parametrize("how", ["replaced", "deleted", "replaced_then_killed"])
def test_database_changed_under_the_server(tmp_path: Path, fake_llm: FakeLLM, how: str) -> None:
    env = vigil_env(tmp_path, fake_llm.url, restart_grace_s=4)
    with vigil(tmp_path, env, "supervise", "--no-worker") as sup:
        first = sup.wait_live()["pid"]
        before = sup.client.post("/api/chats/old/messages", json={"text": "before"}, headers=AUTH)
        assert before.status_code == 200, before.text
        # A turn in flight holds the drain open, so the unhealthy state is visible.
        fake_llm.stall_after_chunks, fake_llm.stall_s = 1, 6.0
        turn = StreamedTurn(sup.url, "inflight", "a long answer").start()
        assert turn.first_delta.wait(10), "the streamed turn never started"
        if how == "deleted":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{sup.db}{suffix}").unlink(missing_ok=True)
        else:
            os.replace(_copy_with_marker(sup.db, "local:marker"), sup.db)
        if how == "replaced_then_killed":
            # Killed before it could notice: the old file's -wal is still at the
            # path, and must not be applied to the new file by the next server.
            os.kill(first, signal.SIGKILL)
        else:
            body = wait_for(
                lambda: _unhealthy_replaced(sup), 10, "/health to say database_replaced"
            )
            assert body["status"] == "unhealthy"
            assert body["database"] == "replaced"
            refused = sup.client.post("/api/chats/new/messages", json={"text": "x"}, headers=AUTH)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] in {"database_replaced", "restarting"}

        fake_llm.stall_after_chunks = None
        turn.join(30)
        second = wait_for(
            lambda: (server_pid(sup) or first) != first and server_pid(sup), 30, "a new server"
        )
        assert second != first
        health = wait_for(
            lambda: sup.client.get("/health").json().get("database") == "ok", 10, "database ok"
        )
        assert health
        after = sup.client.post("/api/chats/new/messages", json={"text": "after"}, headers=AUTH)
        assert after.status_code == 200, after.text
        old = sup.client.get("/api/chats/old/messages", headers=AUTH)
        assert "before" in [m["content"] for m in old.json()["messages"]]
        integrity = query(sup.db, "PRAGMA integrity_check")
        assert [next(iter(r.values())) for r in integrity] == ["ok"]
        if how != "deleted":
            response = sup.client.get("/api/chats/marker/messages", headers=AUTH)
            marker = response.json()
            assert response.status_code == 200, (marker, sup.log())
            assert [m["content"] for m in marker["messages"]] == ["from the replacement"]
            assert "before" in [m["content"] for m in old.json()["messages"]]
        reasons = [r["reason"] for r in sup.restarts()]
        log = (sup.logs_dir / "system.log").read_text()
        if how == "replaced_then_killed":
            assert "crash" in reasons, reasons
            assert "belongs to the file that was at" in log
        else:
            # The server's record of its restart went to the file now at the path.
            assert "database_replaced" in reasons, reasons
            assert "system.db was " + how in log
        if how == "deleted":  # copied back from the server's open file: nothing lost
            assert "copied back" in log
