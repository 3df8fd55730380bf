"""The supervisor's restart policy: backoff, flap limit, what an exit means.

Pure: decisions are functions of (policy, restart times, now), with no
processes, clocks or files, so they are tested without sleeping;
``monitoring/supervisor/runner.py`` carries them out.
"""

from __future__ import annotations

import signal
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.process import RESTART_REQUESTED

if TYPE_CHECKING:
    from core.config import Settings

# A child that exits with one of these has a configuration or permission
# problem (2: a bad setting, 78: sysexits' EX_CONFIG, e.g. a read-only data
# directory): retried every ``retry_failed_s``, never a crash loop.
CONFIG_EXITS = frozenset({2, 78})


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


def describe_exit(code: int) -> str:
    """A child's exit status as the log says it (``killed by SIGKILL``, ``exit code 1``)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == RESTART_REQUESTED:
        return "exit 75, restart requested"
    return f"exit code {code}"
