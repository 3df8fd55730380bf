"""The Huey instance and Vigil's tasks on it, every run recorded in ``server_tasks``.

``build_queue(settings)`` makes a ``SqliteHuey`` on ``data/tasks.db``, or a
``RedisHuey`` when ``VIGIL_HUEY_REDIS_URL`` is set, and registers the jobs of
``tasks/jobs.py`` on it: each as a plain task (enqueue it with
``queue.enqueue(name, ...)``) and, when scheduled, as a periodic task. A
factory rather than a module-level instance keeps imports free of side
effects and lets tests pass their own Settings; ``tasks.queue.huey`` still
works for Huey's own tools (built from ``load_settings()`` on first access).

Recording: enqueueing inserts a ``queued`` row (Huey's ENQUEUED signal, in
whichever process enqueues); the worker marks it ``running``, then
``completed`` or ``failed`` with duration, result and error, and logs each
step to ``logs/tasks.log`` (logger ``tasks``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import Result, Task, TaskWrapper
from huey.exceptions import TaskLockedException
from huey.signals import SIGNAL_ENQUEUED

from core.config import Settings, load_settings
from core.database import connect_sync
from core.maintenance import (
    mark_interrupted_runs,
    record_finished,
    record_queued,
    record_running,
)
from core.schedule import resolve_schedule
from tasks.jobs import JOBS, Job

log = logging.getLogger(__name__)

HEAVY_LOCK = "vigil-heavy"  # backup and vacuum never overlap
HEAVY = {"backup", "vacuum"}
HEAVY_WAIT_S = 1800.0
PERIODIC_PREFIX = "periodic_"


@dataclass
class VigilQueue:
    """A Huey instance with Vigil's tasks registered by name."""

    settings: Settings
    huey: Huey
    tasks: dict[str, TaskWrapper] = field(default_factory=dict)
    periodic: dict[str, TaskWrapper] = field(default_factory=dict)

    def enqueue(self, task: str, /, **kwargs: Any) -> Result:
        if task not in self.tasks:
            raise KeyError(f"no task named {task!r}; known: {', '.join(self.tasks)}")
        return self.tasks[task](**kwargs)

    def depth(self) -> dict[str, int]:
        return {"pending": self.huey.pending_count(), "scheduled": self.huey.scheduled_count()}


def create_huey(settings: Settings) -> Huey:
    if settings.huey_redis_url:
        return RedisHuey("vigil", url=settings.huey_redis_url, results=False)
    if not settings.data_dir.exists():
        settings.data_dir.mkdir(parents=True)
        settings.data_dir.chmod(0o700)
    return SqliteHuey("vigil", filename=str(settings.tasks_db_path), results=False, timeout=10)


def task_name(task: Task) -> str:
    return task.name.removeprefix(PERIODIC_PREFIX)


def run_recorded(settings: Settings, name: str, task_id: str, job: Job, /, **kwargs: Any) -> Any:
    """Run ``job`` with its ``server_tasks`` row moved through running -> done."""
    row = _record(settings, lambda c: record_running(c, task_id, name))
    log.info("task %s [%s] started", name, task_id)
    started = time.monotonic()
    try:
        result = job(settings, **kwargs)
    except Exception as exc:
        took = time.monotonic() - started
        error = f"{type(exc).__name__}: {exc}"
        if row:
            _record(settings, lambda c: record_finished(c, row, duration_s=took, error=error))
        log.error("task %s [%s] failed after %.2f s: %s", name, task_id, took, error)
        raise
    took = time.monotonic() - started
    if row:
        _record(settings, lambda c: record_finished(c, row, duration_s=took, result=result))
    log.info("task %s [%s] completed in %.2f s: %s", name, task_id, took, result)
    return result


def _record(settings: Settings, write: Any) -> Any:
    """Write to server_tasks; a failure here is logged, never fatal to the task."""
    try:
        conn = connect_sync(settings.db_path, create=False)
        try:
            return write(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("could not record a task run in server_tasks: %s", exc)
        return None


def _make_runner(queue: VigilQueue, name: str, job: Job) -> Any:
    settings, huey = queue.settings, queue.huey

    def locked(settings: Settings, **kwargs: Any) -> Any:
        # No TTL (SqliteHuey and Redis < 7.4 lack it): the worker flushes a stale lock at start.
        lock = huey.lock_task(HEAVY_LOCK)
        deadline = time.monotonic() + HEAVY_WAIT_S
        while True:  # wait our turn rather than fail: both were asked for
            try:
                lock.acquire()
                break
            except TaskLockedException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            return job(settings, **kwargs)
        finally:
            lock.release()

    body = locked if name in HEAVY else job

    def runner(task: Task, **kwargs: Any) -> Any:
        return run_recorded(settings, name, task.id, body, **kwargs)

    runner.__name__ = name
    runner.__module__ = __name__
    return runner


def build_queue(settings: Settings) -> VigilQueue:
    """The Huey instance with every job registered (raises ConfigError on a bad schedule)."""
    schedule = resolve_schedule(settings.task_schedule)
    queue = VigilQueue(settings, create_huey(settings))
    for name, job in JOBS.items():
        runner = _make_runner(queue, name, job)
        queue.tasks[name] = queue.huey.task(context=True, name=name)(runner)
        validator = schedule.get(name)
        if validator is not None:
            periodic = queue.huey.periodic_task(
                validator, context=True, name=PERIODIC_PREFIX + name
            )(runner)
            queue.periodic[name] = periodic

    @queue.huey.signal(SIGNAL_ENQUEUED)
    def _on_enqueued(signal: str, task: Task, *args: Any) -> None:
        _record(settings, lambda c: record_queued(c, task.id, task_name(task)))

    return queue


def mark_interrupted(settings: Settings) -> int:
    """At worker start: runs left 'running' by a killed worker become 'failed'."""
    return int(_record(settings, mark_interrupted_runs) or 0)


def queue_depth(settings: Settings) -> dict[str, Any]:
    """Pending and scheduled task counts, for ``status`` (never raises)."""
    if not settings.huey_redis_url and not settings.tasks_db_path.exists():
        return {"pending": 0, "scheduled": 0, "backend": "sqlite"}  # never enqueued yet
    try:
        queue = VigilQueue(settings, create_huey(settings))
        depth: dict[str, Any] = queue.depth()
        depth["backend"] = "redis" if settings.huey_redis_url else "sqlite"
        return depth
    except Exception as exc:  # the queue is optional for status: report, don't fail
        return {"error": f"{type(exc).__name__}: {exc}"}


def __getattr__(name: str) -> Any:
    if name == "huey":
        return build_queue(load_settings()).huey
    raise AttributeError(name)
