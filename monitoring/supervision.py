"""Pure pieces of the supervisor: policy, backoff, flap limit, restart events.

Decisions are functions of (policy, restart times, now) so they are tested
without processes or sleeping; ``monitoring/supervisor.py`` carries them out.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import http.client
import json
import logging
import os
import shlex
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import Settings

# Exit code of a child that asks to be restarted (the governor, /restart/force,
# a scheduled restart): sysexits' EX_TEMPFAIL, "try again later".
RESTART_REQUESTED = 75
# A child that exits with one of these has a configuration or permission
# problem (2: a bad setting, 78: sysexits' EX_CONFIG, e.g. a read-only data
# directory): retried every ``retry_failed_s``, never a crash loop.
CONFIG_EXITS = frozenset({2, 78})
PR_SET_PDEATHSIG = 1
log = logging.getLogger("monitoring.supervisor")


@dataclass(frozen=True)
class Policy:
    """How hard the supervisor tries; built from the ``supervisor_*`` settings."""

    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    backoff_reset_s: float = 600.0
    flap_max: int = 5
    flap_window_s: float = 300.0
    watchdog_timeout_s: float = 30.0
    stop_timeout_s: float = 10.0
    grace_s: float = 300.0
    retry_failed_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            backoff_initial_s=settings.supervisor_backoff_initial_s,
            backoff_max_s=settings.supervisor_backoff_max_s,
            backoff_reset_s=settings.supervisor_backoff_reset_s,
            flap_max=settings.supervisor_flap_max,
            flap_window_s=settings.supervisor_flap_window_s,
            watchdog_timeout_s=settings.supervisor_watchdog_timeout_s,
            stop_timeout_s=settings.supervisor_stop_timeout_s,
            grace_s=settings.restart_grace_s,
            retry_failed_s=settings.supervisor_retry_failed_s,
        )

    @property
    def watchdog_poll_s(self) -> float:
        """How often /health/live is asked: several times per timeout."""
        return max(0.1, min(2.0, self.watchdog_timeout_s / 5))

    def backoff(self, attempt: int) -> float:
        """Delay before restart number ``attempt`` (1-based) of a crashing child."""
        if attempt <= 0:
            return 0.0
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1)))

    def is_flapping(self, restarts: deque[float], now: float) -> bool:
        """True when another restart would exceed ``flap_max`` within the window."""
        while restarts and now - restarts[0] > self.flap_window_s:
            restarts.popleft()
        return len(restarts) >= self.flap_max

    def decide_restart(
        self,
        *,
        planned: bool,
        attempt: int,
        uptime_s: float,
        restarts: deque[float],
        planned_restarts: deque[float],
        now: float,
    ) -> RestartDecision:
        """What to do with a child that just exited; records ``now`` in the deques.

        Only the first planned restart (exit 0/75) in the flap window is free:
        a child that keeps asking (memory above the threshold right after
        start) would otherwise be restarted at once forever. Later planned
        restarts in the window get the crash backoff, and every restart,
        planned or not, counts toward the flap limit.
        """
        if uptime_s >= self.backoff_reset_s:
            attempt = 0
        while planned_restarts and now - planned_restarts[0] > self.flap_window_s:
            planned_restarts.popleft()
        free = planned and not planned_restarts
        if not free:
            attempt += 1
        if self.is_flapping(restarts, now):
            return RestartDecision("fail", attempt, 0.0, planned)
        restarts.append(now)
        if planned:
            planned_restarts.append(now)
        return RestartDecision("restart", attempt, 0.0 if free else self.backoff(attempt), planned)


@dataclass(frozen=True)
class RestartDecision:
    """``action`` is ``restart`` (after ``delay_s``) or ``fail`` (flap limit reached)."""

    action: str
    attempt: int
    delay_s: float
    planned: bool


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process. ``live_url`` turns the hang watchdog on."""

    name: str
    argv: list[str]
    live_url: str | None = None
    env: dict[str, str] | None = None
    # The server writes its own record on a graceful exit (it knows the reason).
    records_own_exits: bool = False
    # Start once that child answers its live_url (or after START_AFTER_MAX_S).
    start_after: str | None = None


@dataclass
class RestartEvent:
    """One row of the ``restarts`` table."""

    child: str
    reason: str
    at: float
    exit_code: int | None = None
    signal: int | None = None
    uptime_s: float | None = None
    last_rss_mb: float | None = None
    attempt: int | None = None
    backoff_s: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChildState:
    """What the supervisor knows about one child (also written to the state file)."""

    spec: ChildSpec
    state: str = "starting"  # starting, waiting, running, backoff, failed, stopped
    pid: int | None = None
    started_mono: float = 0.0
    started_at: float = 0.0
    attempt: int = 0
    restarts: deque[float] = field(default_factory=deque)
    planned_restarts: deque[float] = field(default_factory=deque)
    next_start_mono: float = 0.0
    next_start_at: float | None = None
    backoff_s: float = 0.0
    last_live_ok: float = 0.0
    last_rss_mb: float | None = None
    watchdog_fired: bool = False
    live_seen: bool = False
    last_exit: dict[str, Any] | None = None
    alerted: str | None = None  # the critical alert raised and not yet resolved

    def public(self, now_mono: float, policy: Policy) -> dict[str, Any]:
        window = [t for t in self.restarts if now_mono - t <= policy.flap_window_s]
        return {
            "state": self.state,
            "pid": self.pid,
            # A child with no process (failed, backoff) is never live.
            "is_live": (self.live_seen and self.pid is not None) if self.spec.live_url else None,
            "started_at": self.started_at or None,
            "attempt": self.attempt,
            "restarts_in_window": len(window),
            "flap_max": policy.flap_max,
            "is_failed": self.state == "failed",
            "backoff_s": self.backoff_s,
            "next_start_at": self.next_start_at,
            "last_exit": self.last_exit,
            "alert": self.alerted,
        }


def read_rss_mb(pid: int, proc: Path = Path("/proc")) -> float | None:
    """Resident memory of ``pid`` from ``/proc/<pid>/statm``; None when unknown."""
    try:
        fields = (proc / str(pid) / "statm").read_text().split()
        return round(int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576, 1)
    except (OSError, ValueError, IndexError):
        return None


_BAD_LIVE_URLS: set[str] = set()


def is_live(url: str, *, timeout: float) -> bool:
    """True when ``url`` answers 200; a URL that cannot be parsed is never live."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError for an unbracketed IPv6 host (http://::1:8080)
    except ValueError as exc:
        if url not in _BAD_LIVE_URLS:  # polled every few seconds: say it once
            _BAD_LIVE_URLS.add(url)
            log.error("cannot check %s: %s (IPv6 hosts need [brackets])", url, exc)
        return False
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == RESTART_REQUESTED:
        return "exit 75, restart requested"
    return f"exit code {code}"


@contextlib.contextmanager
def logged(what: str) -> Iterator[None]:
    """Storage trouble must never take the supervisor down: log and carry on."""
    try:
        yield
    except Exception:  # loop boundary
        log.exception("supervisor: failed %s", what)


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM if the supervisor dies (Linux).

    Without it, a supervisor killed with SIGKILL (OOM killer, kill -9) would
    leave a server holding the port and the next start would fail.
    """

    def arm() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return arm


class StateFile:
    """``data/supervisor.json`` (read by ``GET /restart/status``) and its lock file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock_fd: int | None = None

    def lock(self) -> bool:
        """One supervisor per data directory (start.sh and systemd must not both run)."""
        if self.path is None:
            return True
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.error(
                "another supervisor (pid %s) already runs for %s; not starting a second one",
                self.read().get("pid", "?"),
                self.path.parent,
            )
            return False
        self._lock_fd = fd
        return True

    def read(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text())) if self.path else {}
        except (OSError, ValueError):
            return {}

    def write(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.path)  # readers never see half a file


def webhook_alerter(url: str, *, timeout_s: float = 5.0) -> Callable[..., None]:
    """Send the supervisor's critical alerts to ``VIGIL_ALERT_WEBHOOK_URL``.

    The same body shape as the governor's webhook (``source``, ``event``,
    ``alert``); posted from a short-lived thread so the supervisor loop never
    waits on the network.
    """

    def send(alert_type: str, message: str, event: str = "raised") -> None:
        now = time.time()
        body = {
            "source": "vigil-supervisor",
            "event": event,
            "alert": {
                "alert_type": alert_type,
                "severity": "critical",
                "message": message,
                "timestamp": now,
                "raised_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "recommended_action": "read logs/system.log, fix the cause, then restart Vigil",
            },
        }
        threading.Thread(target=_post, args=(url, body, timeout_s), daemon=True).start()

    return send


def _post(url: str, body: dict[str, Any], timeout_s: float) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            log.info("alert sent to the webhook (HTTP %d)", response.status)
    except (OSError, ValueError) as exc:
        log.warning("alert webhook failed: %s", exc)


def supervised_children(
    python: str, main_py: str, live_url: str, *, worker: bool, extra: list[str]
) -> list[ChildSpec]:
    """The server, the worker (started once the server answers), extra ``NAME=COMMAND``s."""
    children = [
        ChildSpec("server", [python, main_py, "serve"], live_url=live_url, records_own_exits=True)
    ]
    if worker:
        children.append(ChildSpec("worker", [python, main_py, "worker"], start_after="server"))
    for item in extra:
        name, _, command = item.partition("=")
        if not name.strip() or not command.strip():
            raise ValueError(f"--child must be NAME=COMMAND, got {item!r}")
        if any(c.name == name for c in children):
            raise ValueError(f"--child {name}: a child of that name already exists")
        children.append(ChildSpec(name, shlex.split(command)))
    return children
