"""ResourceSnapshot (the resource fields the governor decides on) and the bounded history ring."""

from __future__ import annotations

import bisect
import json
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.files import write_private


@dataclass(frozen=True, slots=True)
class ResourceSnapshot:
    """One sample of Vigil's process tree and its surroundings.

    ``memory_mb``/``cpu_percent`` cover the whole tree (supervisor, server,
    worker and their children; shown, scored and held against the hard
    limit), ``server_memory_mb`` the server alone (the cleanup, high and
    restart levels: only the server's memory is what those actions change);
    ``cpu_percent`` is a share of the CPUs available to us (0-100),
    ``server_cpu_percent`` a share of one core (an event loop is
    single-threaded). ``primed`` is False for the first sample, whose CPU
    reading means nothing and which drives no decision.
    """

    timestamp: float
    memory_mb: float
    cpu_percent: float
    active_sessions: int
    total_processes: int
    disk_usage_percent: float
    network_io_bytes: tuple[int, int]
    server_memory_mb: float = 0.0
    server_cpu_percent: float = 0.0
    loop_lag_ms: float = 0.0
    in_flight_turns: int = 0
    cached_sessions: int = 0
    cpu_pressure: float | None = None
    memory_pressure: float | None = None
    pressure_scope: str = "none"
    primed: bool = True

    @property
    def decision_memory_mb(self) -> float:
        """The server process's own RSS: what a cleanup or a graceful restart can change.

        The tree's figure stands in when the server's is unknown (0: a row
        saved by an older version, or a sample taken outside the tree).
        """
        return self.server_memory_mb if self.server_memory_mb > 0 else self.memory_mb

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["network_io_bytes"] = list(self.network_io_bytes)
        data["time"] = datetime.fromtimestamp(self.timestamp, UTC).isoformat(timespec="seconds")
        for key in ("memory_mb", "cpu_percent", "server_memory_mb", "server_cpu_percent"):
            data[key] = round(data[key], 2)
        data["loop_lag_ms"] = round(self.loop_lag_ms, 2)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResourceSnapshot:
        """The inverse of :meth:`to_dict` (for the history saved across restarts).

        Every field is coerced to its type, so a hand-edited or corrupt file
        raises TypeError/ValueError here instead of breaking a comparison later.
        """
        values: dict[str, Any] = {"network_io_bytes": (0, 0)}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name == "network_io_bytes":
                value = tuple(int(x) for x in value or (0, 0))
                if len(value) != 2:
                    raise ValueError("network_io_bytes needs two numbers")
            elif f.name == "pressure_scope":
                value = str(value)
            elif f.name == "primed":
                if not isinstance(value, bool):
                    raise TypeError("primed must be true or false")
            elif value is None and f.name in _OPTIONAL:
                pass
            else:
                value = _COERCE[f.name](value)
            values[f.name] = value
        return cls(**values)


_OPTIONAL = frozenset({"cpu_pressure", "memory_pressure"})
_INTS = frozenset({"active_sessions", "total_processes", "in_flight_turns", "cached_sessions"})


def _finite(value: Any) -> float:
    """float(), but NaN/inf are refused too (they would break JSON answers and charts)."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


_COERCE: dict[str, Any] = {
    f.name: int if f.name in _INTS else _finite
    for f in fields(ResourceSnapshot)
    if f.name not in ("network_io_bytes", "pressure_scope", "primed")
}


class History:
    """A bounded ring of snapshots, oldest first (default one hour of them)."""

    def __init__(self, maxlen: int) -> None:
        self._items: deque[ResourceSnapshot] = deque(maxlen=max(2, maxlen))

    def append(self, snapshot: ResourceSnapshot) -> None:
        self._items.append(snapshot)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[ResourceSnapshot]:
        return iter(self._items)

    @property
    def maxlen(self) -> int:
        return self._items.maxlen or 0

    @property
    def latest(self) -> ResourceSnapshot | None:
        return self._items[-1] if self._items else None

    def since(self, timestamp: float) -> list[ResourceSnapshot]:
        items = list(self._items)
        keys = [s.timestamp for s in items]
        return items[bisect.bisect_left(keys, timestamp) :]

    def items(self) -> list[ResourceSnapshot]:
        return list(self._items)

    def save(self, path: Path) -> int:
        """Write the ring as JSON (atomically), so a restart keeps the charts."""
        ring = json.dumps([s.to_dict() for s in self._items])
        write_private(path, ring, tmp=path.with_name(path.name + ".tmp"), sync=False)
        return len(self._items)

    def load(self, path: Path, *, newer_than: float) -> int:
        """Prepend snapshots saved by the previous process (bad files are ignored)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        if not isinstance(raw, list):
            return 0
        current = list(self._items)
        # saved rows must be older than this process's own (a skewed file could say otherwise)
        before = current[0].timestamp if current else math.inf
        kept: list[ResourceSnapshot] = []
        for item in raw:  # one bad row costs that row, not the whole chart
            try:
                snapshot = ResourceSnapshot.from_dict(item)
            except (TypeError, ValueError, AttributeError, KeyError):
                continue
            if newer_than <= snapshot.timestamp < before:
                kept.append(snapshot)
        kept.sort(key=lambda s: s.timestamp)  # since() bisects by timestamp
        self._items.clear()
        self._items.extend([*kept, *current])
        return len(kept)


def downsample(items: list[ResourceSnapshot], points: int) -> list[ResourceSnapshot]:
    """At most ``points`` snapshots, evenly spread, always keeping the newest."""
    if points <= 0 or len(items) <= points:
        return items
    step = len(items) / points
    picked = [items[int(i * step)] for i in range(points - 1)]
    return [*picked, items[-1]]
