"""Notices ``system.db`` being deleted or replaced under the running server.

A restore run by hand, a ``cp`` over the file, an ``rm``: the server keeps
writing to the file it holds open, which nobody will read again, so every
write it acknowledges from then on is lost at the next start. The watch
compares the path's device and inode with the open file every few seconds
(writes check it too, see ``Database.check_file``). On a change:

- writes are refused with 503 ``database_replaced`` and ``/health`` is
  ``unhealthy`` with that reason;
- a critical alert is raised;
- a governed restart brings the server back on whatever file is now at the
  path, through the same pre-flight checks as any start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 2.0
ACTION = (
    "the server restarts by itself on the file now at the path; if that was not "
    "intended, stop Vigil (scripts/stop.sh) and restore with scripts/vigilctl restore"
)


async def watch_database(runtime: Any, *, interval: float = CHECK_INTERVAL_S) -> str:
    """Check until the file changes; then alert, restart, and return how it changed."""
    while True:
        how = runtime.db.check_file()
        if how is not None:
            await on_replaced(runtime, how)
            return str(how)
        await asyncio.sleep(interval)


async def on_replaced(runtime: Any, how: str) -> None:
    detail = f"{runtime.db.path} was {how} while the server was running"
    monitoring = runtime.monitoring
    if monitoring is not None:
        try:
            await monitoring.raise_alert(
                "database_replaced", "critical", f"{detail}; writes are refused", ACTION
            )
        except Exception:  # the restart below matters more than the alert
            log.exception("could not raise the database_replaced alert")
    hook = runtime.extras.get("request_restart")
    if hook is None:
        log.critical("%s; no restart path in this process: restart Vigil by hand", detail)
        return
    hook("database_replaced", detail)


async def start_database_watch(app: Any, runtime: Any, stack: contextlib.AsyncExitStack) -> None:
    """Starter: run the watch for the server's lifetime."""
    task = asyncio.ensure_future(watch_database(runtime))

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
