"""``vigilctl run TASK``: run one of the scheduled tasks now, in this process.

Inline rather than enqueued: it works whether the worker runs or not, and the
operator sees the result (or the error) when the command returns. The run is
recorded in ``server_tasks`` exactly like a scheduled one (running, then
completed or failed, with duration and result; task id ``cli-...``) and logged
(logger ``tasks.queue``). ``backup`` and ``vacuum`` take the worker's heavy-task
lock first, so a manual run waits for a scheduled one rather than overlap it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import typer
from huey.exceptions import TaskLockedException

from core.cli.db import run_with_progress
from core.cli.output import JSON_OPT, cli_settings, fail, guarded, print_json, require_db
from core.config import Settings
from tasks.jobs import JOBS
from tasks.queue import HEAVY, HEAVY_LOCK, HEAVY_WAIT_S, create_huey, run_recorded


@contextlib.contextmanager
def heavy_lock(settings: Settings, name: str) -> Iterator[None]:
    """The worker's lock for backup/vacuum (waits up to HEAVY_WAIT_S, like the worker)."""
    if name not in HEAVY:
        yield
        return
    lock = create_huey(settings).lock_task(HEAVY_LOCK)
    deadline = time.monotonic() + HEAVY_WAIT_S
    told = False
    while True:
        try:
            lock.acquire()
            break
        except TaskLockedException:
            if time.monotonic() > deadline:
                fail(f"a backup or vacuum has held the task lock for {HEAVY_WAIT_S:.0f} s")
            if not told:
                typer.echo("waiting for the running backup or vacuum to finish...", err=True)
                told = True
            time.sleep(0.2)
    try:
        yield
    finally:
        lock.release()


@guarded
def run(
    task: str = typer.Argument(..., help="Task name: " + ", ".join(JOBS)),
    as_json: bool = JSON_OPT,
) -> None:
    """Run a scheduled task now and show its result (recorded like a scheduled run)."""
    if task not in JOBS:
        fail(f"unknown task {task!r}; known: {', '.join(JOBS)}", 2)
    settings = cli_settings()
    require_db(settings)
    task_id = f"cli-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()

    def work() -> dict[str, Any]:
        with heavy_lock(settings, task):
            result = run_recorded(settings, task, task_id, JOBS[task])
        return {"result": result}

    try:
        outcome = run_with_progress(work, phase=task, show=not as_json)
    except Exception as exc:  # the job's own failure: recorded as failed already
        fail(f"task {task} failed: {type(exc).__name__}: {exc}")
    took = time.monotonic() - started
    report = {"task": task, "task_id": task_id, "duration_s": round(took, 3), **outcome}
    if as_json:
        print_json(report)
        return
    typer.echo(f"task {task} completed in {took:.2f} s [{task_id}]")
    result = outcome["result"]
    if isinstance(result, dict):
        for key, value in result.items():
            typer.echo(f"  {key}: {value}")
    else:
        typer.echo(f"  {result}")


def register(cli: typer.Typer) -> None:
    """Add ``run`` to main.py's app."""
    cli.command("run")(run)


def register_ops_data(cli: typer.Typer) -> None:
    """``db``, ``delete`` and ``run``: one hook in main.py for the three."""
    from core.cli import data, db

    db.register(cli)
    data.register(cli)
    register(cli)
