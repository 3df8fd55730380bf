"""IntegratedMonitoringSystem.tick with an injected snapshot source and fake clock:
the alerts table gets raise and resolve times, effects and the restart hook are
called with what the decisions said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.database import Database
from core.errors import StorageError
from monitoring.alerts import PerformanceAlert
from monitoring.resources import ResourceMonitor
from monitoring.snapshot import ResourceSnapshot
from monitoring.store import AlertStore
from monitoring.system import IntegratedMonitoringSystem
from tests.monitoring.helpers import snap, thresholds


class RecordingEffects:
    """Stands in for RuntimeEffects: records what the governor asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def cleanup(self, *, aggressive: bool) -> dict[str, Any]:
        self.calls.append(("cleanup", aggressive))
        return {"freed_mb": 0.0, "evicted_sessions": 0, "pruned_turns": 0}

    def throttle(self, retry_after_s: float, reason: str) -> None:
        self.calls.append(("throttle", retry_after_s))

    def unthrottle(self) -> None:
        self.calls.append(("unthrottle", None))

    async def set_llm_reduced(self, reduced: bool) -> int:
        self.calls.append(("llm_reduced", reduced))
        return 2 if reduced else 4


class Feed:
    def __init__(self) -> None:
        self.now = 0.0
        self.next: ResourceSnapshot = snap(0.0)

    def source(self) -> ResourceSnapshot:
        return self.next


async def make_system(tmp_path: Path, feed: Feed, hook: Any) -> tuple[Any, Database]:
    db = Database(tmp_path / "system.db")
    await db.open()
    th = thresholds()
    monitor = ResourceMonitor(memory_limit_mb=4096, data_dir=tmp_path)
    system = IntegratedMonitoringSystem(
        settings=None,
        monitor=monitor,
        thresholds=th,
        effects=RecordingEffects(),  # type: ignore[arg-type]
        store=AlertStore(db),
        restart_hook=hook,
        source=feed.source,
        clock=lambda: feed.now,
    )
    return system, db


async def drive(system: Any, feed: Feed, memory: float, until: float, **fields: Any) -> None:
    while feed.now < until:
        feed.now += 5.0
        feed.next = snap(feed.now, memory, **fields)
        await system.tick()


async def test_alerts_are_stored_with_raise_and_resolve_times(tmp_path: Path) -> None:
    feed = Feed()
    requests: list[tuple[str, str, bool]] = []

    def hook(reason: str, detail: str = "", *, immediate: bool = False) -> bool:
        requests.append((reason, detail, immediate))
        return True

    system, db = await make_system(tmp_path, feed, hook)
    try:
        await drive(system, feed, 100.0, 20.0)
        await drive(system, feed, 1200.0, 120.0)  # over the hard limit
        assert {a.alert_type for a in system.active.values()} >= {
            "memory_warning",
            "memory_hard_limit",
        }
        assert any(immediate for _, _, immediate in requests)
        assert all(reason == "governor_memory" for reason, _, _ in requests)
        assert system.emergency_mode
        assert ("cleanup", True) in system.effects.calls  # aggressive in emergency mode
        assert ("llm_reduced", True) in system.effects.calls

        await drive(system, feed, 100.0, 400.0)  # well below: resolves after the hold
        assert system.active == {}
        assert not system.emergency_mode
        rows = await db.fetchall(
            "SELECT alert_type, raised_at, resolved_at FROM alerts ORDER BY id"
        )
        by_type = {r["alert_type"]: r for r in rows}
        hard = by_type["memory_hard_limit"]
        assert hard["raised_at"] == 35.0  # 1200 MB from 25 s, two samples later
        assert hard["resolved_at"] is not None and hard["resolved_at"] > 120 + 120
        assert len(system.restart_requests) == len(requests)
    finally:
        await db.close()


async def test_stale_governor_alerts_are_closed_at_start_the_supervisors_are_shown(
    tmp_path: Path,
) -> None:
    from monitoring import report

    feed = Feed()
    system, db = await make_system(tmp_path, feed, None)
    try:
        insert = "INSERT INTO alerts (alert_type, severity, message, recommended_action,"
        insert += " raised_at) VALUES (?, ?, ?, ?, ?)"
        await db.write(insert, ("memory_warning", "medium", "from the last run", "x", 1.0))
        await db.write(insert, ("restart_flap_limit", "critical", "worker failed", "fix it", 2.0))
        store = system.store
        closed = await store.close_stale(50.0)  # only the governor's own
        assert [r["alert_type"] for r in closed] == ["memory_warning"]
        assert await store.close_stale(60.0) == []
        recent = await store.recent()
        assert {r["alert_type"]: r["resolved_at"] for r in recent} == {
            "memory_warning": 50.0,
            "restart_flap_limit": None,
        }
        external = await store.open_external(since=2.0)
        assert [r["alert_type"] for r in external] == ["restart_flap_limit"]
        assert await store.open_external(since=3.0) == []  # from before this supervisor
        body = report.status(system, recent, external=external)
        assert [a["alert_type"] for a in body["health"]["alerts"]] == ["restart_flap_limit"]
        assert body["health"]["recommendations"][0] == "restart_flap_limit: fix it"
    finally:
        await db.close()


async def test_a_failing_restart_hook_is_recorded_not_raised(tmp_path: Path) -> None:
    feed = Feed()

    def broken(reason: str, detail: str = "", *, immediate: bool = False) -> bool:
        raise RuntimeError("boom")

    system, db = await make_system(tmp_path, feed, broken)
    try:
        assert system.request_restart("governor_cpu", "test") is False
        assert system.restart_requests[0]["accepted"] is False
    finally:
        await db.close()


class RecordingDispatcher:
    def __init__(self) -> None:
        self.events: list[tuple[str, PerformanceAlert]] = []

    def notify(self, event: str, alert: PerformanceAlert) -> None:
        self.events.append((event, alert))


async def test_alerts_open_at_restart_are_notified_as_resolved(tmp_path: Path) -> None:
    feed = Feed()
    system, db = await make_system(tmp_path, feed, None)
    system.dispatcher = RecordingDispatcher()
    try:
        insert = "INSERT INTO alerts (alert_type, severity, message, recommended_action,"
        insert += " raised_at) VALUES (?, ?, ?, ?, ?)"
        await db.write(insert, ("memory_hard_limit", "critical", "1200 MB", "restart", 1.0))
        await db.write(insert, ("cpu_pressure", "low", "host busy", "none", 2.0))
        await db.write(insert, ("restart_flap_limit", "critical", "worker failed", "fix", 3.0))
        closed = await system.close_stale(50.0)
        assert {a.alert_type for a in closed} == {"memory_hard_limit", "cpu_pressure"}
        events = system.dispatcher.events
        assert [(e, a.alert_type) for e, a in events] == [("resolved", "memory_hard_limit")]
        assert events[0][1].message.startswith("closed at restart")
        assert events[0][1].resolved_at == 50.0
    finally:
        await db.close()


class FailingStore(AlertStore):
    async def insert(self, alert: PerformanceAlert) -> int:
        raise StorageError("database is locked")

    async def resolve(self, alert_id: int, at: float) -> None:
        raise StorageError("database is locked")


async def test_an_alert_is_kept_and_notified_when_its_row_cannot_be_written(
    tmp_path: Path,
) -> None:
    feed = Feed()
    system, db = await make_system(tmp_path, feed, None)
    system.store = FailingStore(db)
    system.dispatcher = RecordingDispatcher()
    try:
        await drive(system, feed, 100.0, 20.0)
        await drive(system, feed, 700.0, 120.0)  # above the cleanup level, sustained
        assert "memory_cleanup" in system.active
        assert system.active["memory_cleanup"].id is None
        assert ("raised", "memory_warning") in [
            (e, a.alert_type) for e, a in system.dispatcher.events
        ]
        assert system.errors == 0
        system.store = FailingStore(db)
        system.active["memory_cleanup"].id = 7  # as if stored; resolving it fails
        await drive(system, feed, 100.0, 400.0)
        assert system.active == {}
        assert ("resolved", "memory_warning") in [
            (e, a.alert_type) for e, a in system.dispatcher.events
        ]
        assert system.errors == 0
    finally:
        await db.close()


async def test_recent_governor_restarts_are_read_and_stop_the_restart_loop(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from monitoring import report
    from monitoring.starter import load_governor_restarts

    feed = Feed()
    requests: list[str] = []

    def hook(reason: str, detail: str = "", *, immediate: bool = False) -> bool:
        requests.append(reason)
        return True

    system, db = await make_system(tmp_path, feed, hook)
    try:
        insert = "INSERT INTO restarts (at, child, reason) VALUES (?, ?, ?)"
        now = 10_000.0
        feed.now = now
        await db.write(insert, (now - 100, "server", "governor_memory"))
        await db.write(insert, (now - 1000, "server", "governor_memory"))
        await db.write(insert, (now - 5000, "server", "governor_memory"))  # too long ago
        await db.write(insert, (now - 50, "worker", "governor_memory"))  # not the server
        await db.write(insert, (now - 40, "server", "crash"))  # not the governor's
        settings = SimpleNamespace(supervisor_flap_window_s=300.0)  # 30 min at least
        assert await load_governor_restarts(system, settings, now) == 2
        assert system.recent_restarts == 2

        await drive(system, feed, 100.0, now + 20.0)
        await drive(system, feed, 700.0, now + 600.0)  # above the cleanup level, frees 0
        assert requests == []
        assert system.active["restart_not_helping"].severity == "critical"
        assert ("cleanup", False) in system.effects.calls
        body = report.status(system, [])
        assert body["emergency"]["recent_governor_restarts"] == 2
        assert body["health"]["recommendations"][0].startswith("restart_not_helping: ")
        # restarts long ago no longer count: a later episode restarts again
        await drive(system, feed, 100.0, now + 1200.0)
        assert "restart_not_helping" not in system.active
        assert system.recent_restarts == 1  # the one 1000 s before the start aged out
        await drive(system, feed, 700.0, now + 2000.0)
        assert requests == ["governor_memory"]
    finally:
        await db.close()
