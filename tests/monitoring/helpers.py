"""Synthetic snapshots, thresholds and a driver that feeds a series to ``decide``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from core.config import Settings
from monitoring.governor import Action, GovernorMemo, decide
from monitoring.limits import MemoryBudget
from monitoring.rules import Thresholds
from monitoring.snapshot import ResourceSnapshot


def thresholds(budget_mb: float = 4096.0, **overrides: Any) -> Thresholds:
    values: dict[str, Any] = {
        "data_dir": Path("/nonexistent-vigil-test"),
        "governor_sample_interval_s": 5.0,
        "governor_sustain_s": 60.0,
        "governor_clear_hold_s": 120.0,
        "governor_cleanup_cooldown_s": 120.0,
    }
    values.update(overrides)
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    return Thresholds.from_settings(settings, MemoryBudget(budget_mb, "setting"))


def snap(t: float, memory_mb: float = 100.0, **fields: Any) -> ResourceSnapshot:
    values: dict[str, Any] = {
        "timestamp": t,
        "memory_mb": memory_mb,
        "cpu_percent": 5.0,
        "active_sessions": 1,
        "total_processes": 1,
        "disk_usage_percent": 10.0,
        "network_io_bytes": (0, 0),
    }
    values.update(fields)
    return ResourceSnapshot(**values)


def run(
    series: Iterable[ResourceSnapshot],
    th: Thresholds,
    memo: GovernorMemo | None = None,
    *,
    recent_restarts: int = 0,
) -> tuple[GovernorMemo, list[tuple[float, Action]]]:
    """Feed snapshots one by one (now = their timestamp); collect timed actions."""
    history: list[ResourceSnapshot] = []
    memo = memo or GovernorMemo()
    out: list[tuple[float, Action]] = []
    for s in series:
        history.append(s)
        memo, actions = decide(
            history, memo, th=th, now=s.timestamp, recent_restarts=recent_restarts
        )
        out += [(s.timestamp, a) for a in actions]
    return memo, out


def series(
    fn: Callable[[float], float],
    *,
    start: float = 0.0,
    end: float,
    step: float = 5.0,
    **fields: Any,
) -> list[ResourceSnapshot]:
    """Memory given by ``fn(t)`` sampled every ``step`` seconds."""
    count = int((end - start) / step)
    return [snap(start + i * step, fn(start + i * step), **fields) for i in range(count + 1)]
