"""A real ``python main.py worker`` runs enqueued and periodic tasks; server_tasks shows them.

Runs against SqliteHuey, and against a real redis-server on a free port when
one is installed (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings
from core.database import connect_sync
from core.schedule import DEFAULT_SCHEDULE
from tasks.queue import build_queue
from tests.conftest import make_settings
from tests.fake_llm import dead_url, free_port
from tests.operator_cli import MAIN, cli_env, fill, rows


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail(
            "redis-server is needed for the RedisHuey test: install it with "
            "'sudo apt-get install redis-server' (or run scripts/test.sh, which does)",
            pytrace=False,
        )
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _wait_for(db: Path, predicate, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [dict(r) for r in rows(db, "SELECT * FROM server_tasks ORDER BY id")]
        if predicate(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _add_old_record(settings: Settings) -> None:
    conn = connect_sync(settings.db_path)
    conn.execute(
        "INSERT INTO server_tasks (name, status, created_at, processed_at)"
        " VALUES ('ancient', 'completed', datetime('now', '-30 days'),"
        " datetime('now', '-30 days'))"
    )
    conn.close()


@pytest.mark.slow
def test_worker_runs_enqueued_and_periodic_tasks(tmp_path: Path, backend: str | None) -> None:
    settings = make_settings(tmp_path, llm_base_url=dead_url(), huey_redis_url=backend)
    fill(settings.db_path, 100)
    _add_old_record(settings)
    schedule = {name: "off" for name in DEFAULT_SCHEDULE}
    schedule["cleanup_old_tasks"] = "* * * * *"  # due at start-up: the scheduler checks at once
    extra = {"task_schedule": json.dumps(schedule)}
    if backend:
        extra["huey_redis_url"] = backend
    queue = build_queue(settings)
    queue.enqueue("backup", name="from-the-queue", kind="manual")
    queue.enqueue("backup", name="not a valid name")

    worker = subprocess.Popen(
        [sys.executable, str(MAIN), "worker", "--max-delay", "0.5"],
        env=cli_env(settings, **extra),
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Both backups ended and the periodic cleanup completed (the old 'ancient'
        # record is completed too: counting it, the wait could end mid-cleanup).
        done = _wait_for(
            settings.db_path,
            lambda rs: (
                sum(r["name"] == "backup" and r["status"] in ("completed", "failed") for r in rs)
                >= 2
                and any(r["name"] == "cleanup_old_tasks" and r["status"] == "completed" for r in rs)
            ),
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=20)
    by_name: dict[str, list[dict]] = {}
    for row in done:
        by_name.setdefault(row["name"], []).append(row)

    backups = sorted(by_name["backup"], key=lambda r: r["status"])
    assert [r["status"] for r in backups] == ["completed", "failed"]
    assert json.loads(backups[0]["result"])["snapshot"] == "from-the-queue"
    assert "invalid snapshot name" in backups[1]["error"]
    assert all(r["duration_s"] is not None and r["processed_at"] for r in backups)
    assert (settings.backups_dir / "from-the-queue.db.gz").exists()

    periodic = by_name["cleanup_old_tasks"]
    assert periodic[0]["status"] == "completed"
    assert json.loads(periodic[0]["result"])["deleted"] == 1
    assert "ancient" not in by_name
    assert worker.returncode == 0, stderr[-2000:]

    log = (settings.logs_dir / "tasks.log").read_text()
    assert "task backup [" in log and "task cleanup_old_tasks [" in log
    assert "failed after" in log


@pytest.mark.slow
def test_worker_never_creates_the_database(tmp_path: Path) -> None:
    """A missing system.db is the server's to create: the worker waits, saying why."""
    settings = make_settings(tmp_path, llm_base_url=dead_url())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    worker = subprocess.Popen(
        [sys.executable, str(MAIN), "worker", "--max-delay", "0.5"],
        env=cli_env(settings),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = settings.logs_dir / "tasks.log"
        deadline = time.monotonic() + 20
        while "waiting for" not in (log.read_text() if log.exists() else ""):
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "the worker never said it was waiting"
            time.sleep(0.1)
        time.sleep(1.5)  # a few polls later: still no database
        assert not settings.db_path.exists()
        connect_sync(settings.db_path).close()  # the server's start path creates it
        deadline = time.monotonic() + 20
        while "worker started" not in log.read_text():
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=20)
    assert "the server creates it" in log.read_text()
