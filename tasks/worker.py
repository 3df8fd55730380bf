"""``python main.py worker``: the Huey consumer (a child of the supervisor).

Threads, not processes: the jobs spend their time in SQLite and gzip, which
release the GIL. SIGTERM stops it gracefully (running tasks may finish within
the supervisor's stop timeout); SIGINT (Ctrl-C) stops it at once. The worker
never opens the Telegram session.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time

import typer

from core.config import ConfigError, Settings, load_settings
from core.database import NewerSchema, connect_sync, migrate_sync
from core.errors import StorageError
from tasks.queue import HEAVY_LOCK, build_queue, mark_interrupted

log = logging.getLogger(__name__)


def wait_for_database(settings: Settings, *, poll_s: float = 1.0) -> None:
    """Block until ``system.db`` exists: the worker never creates it.

    Only the server's start path (and ``scripts/start.sh``) may create the
    database; a worker that created one where the real file went missing
    would hide the loss behind an empty database.
    """
    if settings.db_path.exists():
        return
    log.warning(
        "waiting for %s to exist: the server creates it (start Vigil with scripts/start.sh)",
        settings.db_path,
    )
    while not settings.db_path.exists():
        time.sleep(poll_s)
    log.info("%s exists now; the worker starts", settings.db_path)


def prepare(settings: Settings) -> None:
    """Schema up to date (the worker may start before the server), stale runs closed."""
    wait_for_database(settings)
    conn = connect_sync(settings.db_path, create=False)
    try:
        migrate_sync(conn)
    finally:
        conn.close()
    interrupted = mark_interrupted(settings)
    if interrupted:
        log.warning("%d task run(s) were interrupted by the last worker stop", interrupted)


def run_worker(settings: Settings, *, workers: int = 2, max_delay: float = 5.0) -> None:
    queue = build_queue(settings)  # a bad schedule is refused before any wait
    prepare(settings)
    consumer = queue.huey.create_consumer(
        workers=workers,
        worker_type="thread",
        periodic=True,
        initial_delay=0.1,
        max_delay=max_delay,
        scheduler_interval=1,
        check_worker_health=True,
        extra_locks=HEAVY_LOCK,  # a lock left by a killed worker must not block backups
        graceful_signal="TERM",
        shutdown_timeout=max(1.0, settings.supervisor_stop_timeout_s - 2),
    )
    from core.reload import install_worker_handler

    install_worker_handler(consumer, settings)  # SIGHUP: reopen logs, reload the log level
    log.info(
        "worker started (pid %d, %s queue, periodic: %s)",
        os.getpid(),
        "redis" if settings.huey_redis_url else "sqlite",
        ", ".join(queue.periodic) or "none",
    )
    consumer.run()


def register(cli: typer.Typer) -> None:
    """Add the ``worker`` command to main.py's app."""

    @cli.command()
    def worker(
        workers: int = typer.Option(2, min=1, max=16, help="Worker threads."),
        max_delay: float = typer.Option(
            5.0, min=0.1, help="Longest pause (s) between polls of an idle queue."
        ),
    ) -> None:
        """Run the Huey consumer: background tasks and the periodic schedule."""
        from core.logs import start_process_logging

        try:
            settings = load_settings()
            # The worker owns (rotates) tasks.log.
            start_process_logging(settings, rotates=frozenset({"tasks.log"}))
            run_worker(settings, workers=workers, max_delay=max_delay)
        except (ConfigError, NewerSchema, StorageError, sqlite3.Error, OSError) as exc:
            typer.echo(f"vigil: {exc}", err=True)
            raise typer.Exit(2) from None
