"""The supervisor never gives up for good: slow retries after the flap limit and
after configuration exits, one alert per episode, resolved when healthy.

Runs on the virtual clock of ``tests/virtual_time.py``: five minutes of
retries take milliseconds. Children are scripted stand-ins for processes
(``spawn=``), the one part of the OS these decisions need.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.restarts import RestartLog
from core.sqlite import connect_sync
from monitoring.supervisor import ChildSpec, Policy, Supervisor
from monitoring.supervisor.runner import HEALTHY_AFTER_S
from tests.virtual_time import run_virtual

POLICY = Policy(
    backoff_initial_s=1.0, backoff_max_s=4.0, flap_max=3, flap_window_s=60.0, retry_failed_s=300.0
)


class ScriptedProcess:
    """Exits with ``code`` after ``lives_s`` seconds of virtual time (None: runs on)."""

    def __init__(self, clock: Callable[[], float], code: int | None, lives_s: float) -> None:
        self.clock, self.code, self.lives_s = clock, code, lives_s
        self.started = clock()
        self.pid = 999_999_999  # no such process: /proc reads find nothing

    def poll(self) -> int | None:
        if self.code is not None and self.clock() - self.started >= self.lives_s:
            return self.code
        return None

    def kill(self) -> None:
        self.code, self.lives_s = -9, 0.0

    def send_signal(self, sig: int) -> None:
        self.code, self.lives_s = 0, 0.0

    def wait(self, timeout: float | None = None) -> int | None:
        return self.code


class Run:
    """One supervisor with one scripted child, alerts and spawn times recorded."""

    def __init__(self, script: list[int | None], store: Any = None) -> None:
        self.store = store  # a RestartLog: alerts go to a real database too
        self.script = list(script)
        self.spawned: list[float] = []
        self.alerts: list[tuple[str, str]] = []
        self.sup: Supervisor | None = None

    def spawn(self, argv: list[str], **kwargs: Any) -> ScriptedProcess:
        assert self.sup is not None
        self.spawned.append(self.sup.clock())
        code = self.script.pop(0) if self.script else None
        return ScriptedProcess(self.sup.clock, code, 0.2)

    def alert(self, alert_type: str, message: str, event: str = "raised") -> None:
        self.alerts.append((alert_type, event))
        if self.store is not None:
            self.store.alert(alert_type, message, event)

    async def drive(self, seconds: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.sup = Supervisor(
            [ChildSpec("crasher", ["crasher"])],
            POLICY,
            alerts=[self.alert],
            clock=loop.time,
            spawn=self.spawn,
            open_alerts=None if self.store is None else self.store.open_alerts,
        )
        self.sup.adopt_open_alerts()
        self.sup._spawn(self.sup.children[0])
        states = []
        while loop.time() < seconds:
            self.sup.tick(loop.time())
            states.append(self.sup.children[0].state)
            await asyncio.sleep(0.5)
        return {"states": states, "child": self.sup.snapshot()["children"]["crasher"]}


def test_after_the_flap_limit_the_child_is_retried_slowly_and_the_alert_resolves() -> None:
    run = Run([3] * 8)  # crashes 8 times at start, then runs healthy
    result = run_virtual(run.drive(1000.0))
    # 4 quick starts (1 + 3 restarts), the flap limit, then a retry every 300 s
    quick, retries = run.spawned[:4], run.spawned[4:]
    assert quick[-1] < 20
    assert len(retries) >= 5
    first_retry = retries[0] - quick[-1]
    assert 299 <= first_retry <= 302, first_retry
    assert "failed" in result["states"]
    # one alert for the whole episode (two flap limits), resolved once healthy
    assert run.alerts == [("restart_flap_limit", "raised"), ("restart_flap_limit", "resolved")]
    assert result["child"]["state"] == "running"
    assert result["child"]["alert"] is None


def test_a_configuration_exit_is_retried_slowly_not_counted_as_a_crash() -> None:
    run = Run([78, 78])  # e.g. a read-only data directory, fixed later
    result = run_virtual(run.drive(700.0 + HEALTHY_AFTER_S))
    assert len(run.spawned) == 3
    gaps = [b - a for a, b in zip(run.spawned, run.spawned[1:], strict=False)]
    assert all(299 <= gap <= 302 for gap in gaps), gaps
    assert "failed" not in result["states"]  # never the flap limit
    assert run.alerts == [
        ("restart_config_error", "raised"),
        ("restart_config_error", "resolved"),
    ]


def test_a_failed_child_with_no_process_is_not_live() -> None:
    run = Run([3] * 4)
    result = run_virtual(run.drive(30.0))
    spec_child = result["child"]
    assert spec_child["state"] == "failed" and spec_child["pid"] is None
    assert spec_child["is_live"] is None  # no live URL: unknown, never True


def test_is_live_is_false_without_a_process() -> None:
    from monitoring.supervisor import ChildState

    child = ChildState(ChildSpec("server", ["x"], live_url="http://127.0.0.1:1/health/live"))
    child.live_seen, child.pid, child.state = True, None, "failed"
    assert child.public(0.0, POLICY)["is_live"] is False


def test_an_alert_left_open_by_the_last_supervisor_resolves_once_the_child_runs(
    tmp_path: Path,
) -> None:
    """The usual fix for a flapping child is fix + stop/start: the new supervisor
    must resolve the old run's alert, not leave it open for ever."""
    store = RestartLog(tmp_path / "system.db")
    store.prepare()
    first = Run([3] * 8, store)
    run_virtual(first.drive(30.0))  # flap limit reached; then the service is stopped
    store.alert("restart_flap_limit", "gone restarted 5 times (an old --child)")
    store.alert("restart_config_error", "crasher exited with a configuration problem")
    assert open_alerts(store) == [
        ("restart_config_error", "crasher"),
        ("restart_flap_limit", "crasher"),
        ("restart_flap_limit", "gone"),
    ]

    second = Run([None], store)  # the cause was fixed: runs healthy
    result = run_virtual(second.drive(HEALTHY_AFTER_S + 5))
    assert sorted(second.alerts) == [
        ("restart_config_error", "resolved"),
        ("restart_flap_limit", "resolved"),
        ("restart_flap_limit", "resolved"),
    ]
    assert open_alerts(store) == []
    assert result["child"]["alert"] is None


def open_alerts(store: RestartLog) -> list[tuple[str, str]]:
    conn = connect_sync(store.db_path)
    try:
        rows = conn.execute(
            "SELECT alert_type, message FROM alerts WHERE resolved_at IS NULL ORDER BY message"
        ).fetchall()
    finally:
        conn.close()
    return [(row[0], row[1].split(" ", 1)[0]) for row in rows]
