"""The graceful restart and stop path of the server, and the uvicorn that obeys it.

Every way out goes through :meth:`Lifecycle.request_restart`: a governor
request, ``POST /restart/force``, a scheduled restart, SIGTERM/SIGINT. It
turns readiness unhealthy at once (new turns get 503 + Retry-After), lets
replies in flight finish for up to ``restart_grace_s``, flushes the WAL,
writes the restart record and makes the process exit with 75 (restart me) or
0 (stop). Other subsystems reach it through ``runtime.request_restart``
(a ``(reason, detail) -> bool`` callable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from core.admission import Admission
from core.config import Settings
from core.database import Database
from core.errors import StorageError
from core.process import RESTART_REQUESTED
from core.restarts import (
    RestartEvent,
    read_supervisor_state,
    record_async,
    record_pending,
    save_pending_record,
)
from core.rss import rss_mb
from core.sdnotify import SdNotifier
from core.serving import AcceptErrors, connection_limit, guarded_protocol, raise_fd_limit

if TYPE_CHECKING:
    from core.runtime import Runtime

log = logging.getLogger(__name__)

RESTART_REASONS = (
    "governor_memory",
    "governor_cpu",
    "forced",
    "scheduled",
    "database_replaced",
)
# ``stop``: a planned stop (the supervisor is stopping, or none runs us); ``signal``:
# someone signalled the server alone (the supervisor brings it back), or the supervisor died.
STOP_REASONS = ("stop", "signal")
RETRY_AFTER_S = 15.0


class Lifecycle:
    """Owns the server's way out: drain, flush, record, exit."""

    def __init__(
        self,
        settings: Settings,
        admission: Admission,
        db: Database,
        *,
        started_monotonic: float,
        exit_hook: Callable[[int], None] | None = None,
        notifier: SdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.admission = admission
        self.db = db
        self.started_monotonic = started_monotonic
        self.exit_hook = exit_hook
        self.notifier = notifier or SdNotifier(None)
        self.grace_s: float = settings.restart_grace_s
        self.state = "running"  # running -> draining -> exiting
        self.reason = ""
        self.detail = ""
        self.requested_at: float | None = None
        self.exit_code: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()

    @property
    def is_draining(self) -> bool:
        return self.state != "running"

    def request_restart(self, reason: str, detail: str = "", *, immediate: bool = False) -> bool:
        """Start the graceful path; False when one is already under way.

        ``immediate`` (the governor's hard memory limit) skips the grace period:
        turns in flight are cut, the record is still written.
        """
        if reason not in RESTART_REASONS + STOP_REASONS:
            raise ValueError(f"unknown restart reason {reason!r}")
        if immediate:
            self._hurry.set()
        if self.is_draining:
            if reason in STOP_REASONS and self.exit_code != 0:
                # A stop during a restart drain: stop wins, nobody wants it back.
                self.exit_code = 0
                log.warning("stop requested during the %s restart: exiting 0", self.reason)
            else:
                log.info("restart request %s ignored: already %s", reason, self.state)
            return False
        self.state, self.reason, self.detail = "draining", reason, detail
        self.requested_at = time.time()
        self.exit_code = 0 if reason in STOP_REASONS else RESTART_REQUESTED
        self.admission.start_draining(reason=reason, retry_after=RETRY_AFTER_S)
        # No STOPPING=1: the service is the supervisor, which outlives this
        # server on a restart; systemd knows about a stop because it asked.
        what = "stop" if self.exit_code == 0 else "restart"
        self.notifier.notify(f"STATUS=draining for a {reason} {what}")
        log.warning(
            "%s requested (%s%s): draining, %d turn(s) in flight, grace %g s",
            "stop" if self.exit_code == 0 else "restart",
            reason,
            f": {detail}" if detail else "",
            self.admission.in_flight,
            self.grace_s,
        )
        self._task = asyncio.get_running_loop().create_task(self._drain())
        return True

    async def _drain(self) -> None:
        started = time.monotonic()
        admission = self.admission
        idle = asyncio.ensure_future(admission.wait_idle(self.grace_s))
        hurry = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait({idle, hurry}, return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        idle.cancel()
        is_idle = admission.in_flight == 0
        waited = time.monotonic() - started
        if is_idle:
            log.info("drained in %.1f s; no turn in flight", waited)
        else:
            why = "immediate restart" if self._hurry.is_set() else "grace period over"
            log.warning("%s: %d turn(s) still in flight", why, admission.in_flight)
        self.state = "exiting"
        with contextlib.suppress(Exception):
            await self.db.checkpoint("PASSIVE")
        detail = f"drained in {waited:.1f} s"
        if not is_idle:
            cut = f"{admission.in_flight} turn(s) in flight cut"
            detail = f"{cut} after {waited:.1f} s" + (
                " (immediate)" if self._hurry.is_set() else " (grace period over)"
            )
        event = RestartEvent(
            child="server",
            reason=self.reason,
            at=time.time(),
            exit_code=self.exit_code,
            uptime_s=round(time.monotonic() - self.started_monotonic, 1),
            last_rss_mb=rss_mb(),
            detail="; ".join(p for p in (self.detail, detail) if p),
        )
        try:
            if self.db.replaced is not None:
                # The open file is gone from the path, and this process must not
                # open the new one while it holds the old: the next server
                # records this restart (data/restart_pending.json).
                save_pending_record(self.settings.data_dir, event)
            else:
                await record_async(self.db, event)
        except (StorageError, OSError) as exc:  # full disk: the exit must still happen
            log.warning("could not record the restart: %s", exc)
        except Exception:  # the exit must happen whatever went wrong
            log.exception("could not record the restart")
        if self.exit_hook is None:
            log.warning("no server process to exit (embedded server); staying drained")
            return
        assert self.exit_code is not None
        self.exit_hook(self.exit_code)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason or None,
            "detail": self.detail or None,
            "requested_at": self.requested_at,
            "exit_code": self.exit_code,
            "in_flight_turns": self.admission.in_flight,
            "grace_s": self.grace_s,
        }


async def start_lifecycle(app: FastAPI, runtime: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """Starter: the previous server's pending restart record, the systemd watchdog pings."""
    notifier = runtime.lifecycle.notifier
    stack.callback(notifier.close)
    await record_pending(runtime.db, runtime.settings.data_dir)
    if notifier.watchdog_s:
        pinger = asyncio.ensure_future(notifier.watchdog_loop())
        stack.callback(pinger.cancel)


class VigilServer(uvicorn.Server):
    """uvicorn whose first SIGTERM/SIGINT drains instead of closing the socket."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self.exit_code = 0
        self.parent_pid = os.getppid()  # the supervisor, if one started us
        app.state.exit_hook = self.request_exit

    def request_exit(self, code: int) -> None:
        self.exit_code = code
        self.should_exit = True

    def _lifecycle(self) -> Lifecycle | None:
        runtime = getattr(self.app.state, "vigil", None)
        return None if runtime is None else runtime.lifecycle

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Deliberately not uvicorn's: it would re-raise the signal after serve()
        # and kill us with it, losing the exit code.
        lifecycle = self._lifecycle()
        if lifecycle is None or not self.started:
            self.should_exit = True
        elif not lifecycle.is_draining or sig == signal.SIGTERM:
            # Forwarded even while draining: a stop during a restart drain must
            # turn it into a stop (exit 0), not be lost and come back as 75.
            loop = asyncio.get_event_loop()
            detail = signal.Signals(sig).name
            reason = signal_reason(lifecycle.settings, started_by=self.parent_pid)
            loop.call_soon_threadsafe(lifecycle.request_restart, reason, detail)
        elif sig == signal.SIGINT:
            log.warning("second interrupt: exiting without waiting for the drain")
            self.should_exit = self.force_exit = True

    async def startup(self, sockets: Any = None) -> None:
        asyncio.get_running_loop().set_exception_handler(AcceptErrors())
        await super().startup(sockets=sockets)
        lifecycle = self._lifecycle()
        if self.started and lifecycle is not None:
            lifecycle.notifier.notify(f"READY=1\nSTATUS=serving, pid {os.getpid()}")


def signal_reason(settings: Settings, *, started_by: int | None = None) -> str:
    """``stop`` for a planned stop, ``signal`` for any other SIGTERM.

    The supervisor marks its state file ``stopping`` before it passes a stop
    on to the server; a server whose parent is no (live) supervisor of this
    data dir is not coming back either. But when the supervisor that started
    us (``started_by``) died without stopping (kill -9, the OOM killer), the
    SIGTERM is its parent-death signal: no planned stop.
    """
    state = read_supervisor_state(settings.data_dir)
    if state["supervised"]:
        return "stop" if state.get("stopping") else "signal"
    died = (
        started_by is not None
        and started_by > 1
        and state.get("pid") == started_by
        and not state.get("stopping")
        and not state.get("stopped")
    )
    return "signal" if died else "stop"


def run_server(app: FastAPI, settings: Settings) -> int:
    """Serve until the lifecycle says stop; returns the process exit code."""
    config = server_config(app, settings, nofile=raise_fd_limit())
    server = VigilServer(config, app)
    server.run()
    if not server.started:
        return 1
    return server.exit_code


def server_config(app: FastAPI, settings: Settings, *, nofile: int) -> uvicorn.Config:
    """uvicorn as Vigil runs it: connections capped to the fd budget, heads on a deadline."""
    limit = connection_limit(settings.max_connections, nofile)
    log.info(
        "serving at most %d connections (open-file limit %d); request heads within %g s",
        limit,
        nofile,
        settings.http_header_timeout_s,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        workers=1,
        http=guarded_protocol(limit=limit, head_timeout_s=settings.http_header_timeout_s),
        limit_concurrency=limit,
        timeout_keep_alive=max(1, round(settings.http_keepalive_s)),
        timeout_graceful_shutdown=int(settings.supervisor_stop_timeout_s) or 1,
    )
