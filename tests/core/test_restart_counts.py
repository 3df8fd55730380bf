"""Restart rows and their counters are written together; planned stops are counted apart."""

from __future__ import annotations

import time
from pathlib import Path

from core import counters
from core.database import Database
from core.maintenance import database_summary
from core.restarts import RestartEvent, RestartLog, record_async
from core.sqlite import connect_sync


async def test_rows_and_counters_together_stops_apart(tmp_path: Path) -> None:
    path = tmp_path / "system.db"
    log = RestartLog(path)
    log.prepare()
    now = time.time()
    log.record(RestartEvent(child="server", reason="crash", at=now - 3 * 86400, exit_code=1))
    log.record(RestartEvent(child="worker", reason="crash", at=now, exit_code=1))
    db = Database(path)
    await db.open()
    try:
        await record_async(db, RestartEvent(child="server", reason="stop", at=now, exit_code=0))
        await record_async(db, RestartEvent(child="server", reason="forced", at=now, exit_code=75))
    finally:
        await db.close()
    conn = connect_sync(path)
    try:
        stored = counters.read_all_sync(conn)
        summary = database_summary(conn, now=now)["restarts"]
    finally:
        conn.close()
    assert stored == {
        ("vigil_restarts", "reason=crash"): 2,
        ("vigil_restarts", "reason=forced"): 1,
        ("vigil_stops", ""): 1,
    }
    assert summary["total"] == 3 and summary["last_24h"] == 2
    assert summary["by_reason_24h"] == {"crash": 1, "forced": 1}
    assert summary["stops"] == {"total": 1, "last_24h": 1}
    assert {r["reason"] for r in summary["recent"]} == {"crash", "forced", "stop"}
