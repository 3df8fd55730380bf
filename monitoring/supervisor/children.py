"""What the supervisor runs and what it knows about each child (plain data)."""

from __future__ import annotations

import shlex
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from monitoring.supervisor.policy import Policy


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
