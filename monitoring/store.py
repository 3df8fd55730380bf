"""Alerts (and the restarts count) in ``system.db``, through the one Database."""

from __future__ import annotations

import json
from typing import Any, Protocol

from core.restarts import PLANNED_REASONS
from monitoring.alerts import PerformanceAlert
from monitoring.governor import FUTILE_TYPE
from monitoring.rules import RULES


class _Db(Protocol):
    async def write(self, sql: str, params: Any = ()) -> int: ...
    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]: ...
    async def scalar(self, sql: str, params: Any = ()) -> Any: ...


GOVERNOR_TYPES = tuple(
    sorted({rule.alert_type for rule in RULES} | {"alert_flapping", FUTILE_TYPE})
)
_MINE = f"alert_type IN ({', '.join('?' * len(GOVERNOR_TYPES))})"


class AlertStore:
    """Rows of the ``alerts`` table: raised_at on raise, resolved_at on resolve.

    The table is shared: the supervisor writes its own alerts (e.g.
    ``restart_flap_limit``), which the governor shows but never resolves.
    """

    def __init__(self, db: _Db) -> None:
        self.db = db

    async def close_stale(self, now: float) -> list[dict[str, Any]]:
        """Close governor alerts a previous process left open; return the closed rows.

        Their conditions are unknown now (the new process measures afresh); the
        caller notifies "resolved" for them so no receiver keeps an alert open.
        """
        rows = await self.db.fetchall(
            "SELECT id, alert_type, severity, message, recommended_action, raised_at, snapshot"
            f" FROM alerts WHERE resolved_at IS NULL AND {_MINE} ORDER BY id",
            GOVERNOR_TYPES,
        )
        closed = [dict(row) for row in rows]
        for row in closed:  # by id: an alert raised meanwhile stays open
            await self.db.write(
                "UPDATE alerts SET resolved_at = ? WHERE id = ? AND resolved_at IS NULL",
                (now, row["id"]),
            )
            row["resolved_at"] = now
        return closed

    async def recent_restarts(self, *, child: str, prefix: str, since: float) -> list[float]:
        """When ``child`` was restarted for a reason starting with ``prefix``, since ``since``."""
        rows = await self.db.fetchall(
            # substr, not LIKE: "_" in "governor_" would be a wildcard
            "SELECT at FROM restarts WHERE child = ? AND substr(reason, 1, ?) = ?"
            " AND at >= ? ORDER BY at",
            (child, len(prefix), prefix, since),
        )
        return [float(row["at"]) for row in rows]

    async def open_external(self, *, since: float = 0.0, limit: int = 20) -> list[dict[str, Any]]:
        """Open alerts others (the supervisor) raised since ``since``, newest first.

        Nobody resolves the supervisor's alerts, so older ones (from before the
        current supervisor started) are history, not news.
        """
        rows = await self.db.fetchall(
            "SELECT id, alert_type, severity, message, recommended_action, raised_at,"
            f" resolved_at FROM alerts WHERE resolved_at IS NULL AND NOT {_MINE}"
            " AND raised_at >= ? ORDER BY id DESC LIMIT ?",
            (*GOVERNOR_TYPES, since, limit),
        )
        return [dict(row) for row in rows]

    async def insert(self, alert: PerformanceAlert) -> int:
        return await self.db.write(
            "INSERT INTO alerts (alert_type, severity, message, recommended_action, raised_at,"
            " snapshot) VALUES (?, ?, ?, ?, ?, ?)",
            (
                alert.alert_type,
                alert.severity,
                alert.message,
                alert.recommended_action,
                alert.timestamp,
                json.dumps(alert.resource_snapshot.to_dict()),
            ),
        )

    async def resolve(self, alert_id: int, at: float) -> None:
        await self.db.write("UPDATE alerts SET resolved_at = ? WHERE id = ?", (at, alert_id))

    async def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT id, alert_type, severity, message, recommended_action, raised_at,"
            " resolved_at FROM alerts ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [dict(row) for row in rows]

    async def restarts_count(self) -> dict[str, int]:
        """Rows of the ``restarts`` table by reason, planned stops (``stop``) left out.

        For views of the rows kept (they are pruned); ``/metrics`` exports the
        monotonic counters of the ``counters`` table instead.
        """
        rows = await self.db.fetchall(
            "SELECT reason, count(*) AS n FROM restarts WHERE reason NOT IN"
            f" ({', '.join('?' * len(PLANNED_REASONS))}) GROUP BY reason",
            PLANNED_REASONS,
        )
        return {str(row["reason"]): int(row["n"]) for row in rows}

    async def task_counts(self) -> dict[str, int]:
        rows = await self.db.fetchall(
            "SELECT status, count(*) AS n FROM server_tasks"
            " WHERE status IN ('queued', 'running') GROUP BY status"
        )
        counts = {"queued": 0, "running": 0}
        counts.update({str(row["status"]): int(row["n"]) for row in rows})
        return counts
