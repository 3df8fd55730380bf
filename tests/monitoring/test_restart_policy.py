"""Pure restart decisions: backoff, flap limit, the daily schedule (fake clock, no sleeping)."""

from __future__ import annotations

import datetime as dt
import http.server
import logging
import os
import socket
import subprocess
import sys
import threading
from collections import deque
from zoneinfo import ZoneInfo

import pytest

from core.config import Settings
from monitoring.restart import AutoRestartManager, decide, next_run
from monitoring.supervision import Policy, RestartDecision, is_live, supervised_children

UTC = dt.UTC


def test_backoff_doubles_up_to_the_maximum() -> None:
    policy = Policy(backoff_initial_s=1.0, backoff_max_s=60.0)
    assert [policy.backoff(n) for n in range(0, 9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_flap_limit_counts_only_restarts_inside_the_window() -> None:
    policy = Policy(flap_max=3, flap_window_s=300.0)
    restarts: deque[float] = deque([0.0, 100.0, 200.0])
    assert policy.is_flapping(restarts, now=250.0) is True
    assert policy.is_flapping(restarts, now=301.0) is False  # the first one aged out
    assert list(restarts) == [100.0, 200.0]


def test_policy_comes_from_settings(tmp_path: object) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        supervisor_backoff_initial_s=0.5,
        supervisor_flap_max=7,
        restart_grace_s=12,
    )
    policy = Policy.from_settings(settings)
    assert (policy.backoff_initial_s, policy.flap_max, policy.grace_s) == (0.5, 7, 12)


def test_next_run_is_today_or_tomorrow() -> None:
    morning = dt.datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    assert next_run(morning, "04:00", tz=UTC) == dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    later = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    assert next_run(later, "04:00", tz=UTC) == dt.datetime(2026, 3, 2, 4, 0, tzinfo=UTC)


BERLIN = ZoneInfo("Europe/Berlin")


def _fixed_offset(wall: dt.datetime) -> dt.datetime:
    """What ``datetime.now().astimezone()`` gives: the offset of that moment, fixed."""
    aware = wall.replace(tzinfo=BERLIN)
    return aware.replace(tzinfo=dt.timezone(aware.utcoffset() or dt.timedelta()))


@pytest.mark.parametrize(
    ("now", "utc_expected"),
    [
        # spring forward (29 March 2026): 04:00 CEST is 02:00 UTC, not 03:00
        (dt.datetime(2026, 3, 28, 4, 0), dt.datetime(2026, 3, 29, 2, 0, tzinfo=UTC)),
        # fall back (25 October 2026): 04:00 CET is 03:00 UTC, not 02:00
        (dt.datetime(2026, 10, 24, 4, 0), dt.datetime(2026, 10, 25, 3, 0, tzinfo=UTC)),
        # the same day, after the change
        (dt.datetime(2026, 3, 29, 1, 0), dt.datetime(2026, 3, 29, 2, 0, tzinfo=UTC)),
    ],
)
def test_next_run_keeps_the_wall_time_across_a_dst_change(
    now: dt.datetime, utc_expected: dt.datetime
) -> None:
    due = next_run(_fixed_offset(now), "04:00", tz=BERLIN)
    assert due == utc_expected
    assert (due.astimezone(BERLIN).hour, due.astimezone(BERLIN).minute) == (4, 0)


def test_the_manager_uses_its_timezone_after_a_skip() -> None:
    manager = AutoRestartManager(
        "04:00",
        max_postpone_s=60,
        in_flight=lambda: 1,
        request_restart=lambda reason, detail: True,
        now=lambda: _fixed_offset(dt.datetime(2026, 3, 28, 3, 0)),
        tz=BERLIN,
    )
    assert manager.next_at == dt.datetime(2026, 3, 28, 3, 0, tzinfo=UTC)
    assert manager.status()["timezone"] == "Europe/Berlin"


@pytest.mark.parametrize(
    ("minutes_after", "in_flight", "expected"),
    [(-1, 0, "wait"), (0, 0, "restart"), (5, 2, "postpone"), (60, 2, "skip"), (60, 0, "restart")],
)
def test_decide(minutes_after: int, in_flight: int, expected: str) -> None:
    due = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    now = due + dt.timedelta(minutes=minutes_after)
    assert decide(now, due, in_flight, max_postpone_s=3600) == expected


class Clock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


async def test_scheduled_restart_waits_for_turns_in_flight_then_restarts() -> None:
    clock = Clock(dt.datetime(2026, 3, 1, 3, 59, tzinfo=UTC))
    busy = {"turns": 1}
    requests: list[tuple[str, str]] = []

    def request(reason: str, detail: str) -> bool:
        requests.append((reason, detail))
        return True

    def in_flight() -> int:
        # the turn in flight finishes 20 s after the window opened
        if clock.now >= dt.datetime(2026, 3, 1, 4, 0, 20, tzinfo=UTC):
            busy["turns"] = 0
        return busy["turns"]

    manager = AutoRestartManager(
        "04:00",
        max_postpone_s=600,
        in_flight=in_flight,
        request_restart=request,
        now=clock,
        sleep=clock.sleep,
        tz=UTC,
    )
    await manager.run()

    assert len(requests) == 1
    reason, detail = requests[0]
    assert reason == "scheduled" and "postponed" in detail
    assert clock.now >= dt.datetime(2026, 3, 1, 4, 0, 20, tzinfo=UTC)
    assert clock.now < dt.datetime(2026, 3, 1, 4, 1, tzinfo=UTC)


async def test_scheduled_restart_is_skipped_for_the_day_after_the_postpone_limit() -> None:
    clock = Clock(dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC))
    requests: list[str] = []
    manager = AutoRestartManager(
        "04:00",
        max_postpone_s=60,
        in_flight=lambda: 3,
        request_restart=lambda reason, detail: bool(requests.append(reason)),
        now=clock,
        sleep=clock.sleep,
        tz=UTC,
    )
    manager.next_at = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    actions = [await manager.step()]
    while actions[-1] != "skip":
        await clock.sleep(5)
        actions.append(await manager.step())

    assert requests == []
    assert actions[0] == "postpone" and actions[-1] == "skip"
    assert manager.last_skipped == dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    assert manager.next_at == dt.datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
    assert manager.status()["next_at_iso"].startswith("2026-03-02T04:00")


def test_no_schedule_means_no_next_restart() -> None:
    manager = AutoRestartManager(
        None, max_postpone_s=60, in_flight=lambda: 0, request_restart=lambda r, d: True
    )
    assert manager.next_at is None and manager.status()["next_at_iso"] is None


def test_supervised_children_server_first_then_worker_and_extras() -> None:
    children = supervised_children(
        "py", "main.py", "http://x/health/live", worker=True, extra=["tick=sleep 1"]
    )
    assert [c.name for c in children] == ["server", "worker", "tick"]
    assert children[0].live_url == "http://x/health/live" and children[0].records_own_exits
    assert children[1].start_after == "server" and children[1].argv == ["py", "main.py", "worker"]
    assert children[2].argv == ["sleep", "1"]
    with pytest.raises(ValueError, match="NAME=COMMAND"):
        supervised_children("py", "main.py", "u", worker=False, extra=["nocommand"])
    with pytest.raises(ValueError, match="already exists"):
        supervised_children("py", "main.py", "u", worker=False, extra=["server=true"])


class Child:
    """The supervisor's per-child restart bookkeeping, driven through the pure policy."""

    def __init__(self, policy: Policy, uptime_s: float = 70.0) -> None:
        self.policy, self.uptime_s, self.attempt = policy, uptime_s, 0
        self.restarts: deque[float] = deque()
        self.planned: deque[float] = deque()

    def exits(self, now: float, *, planned: bool) -> RestartDecision:
        decision = self.policy.decide_restart(
            planned=planned,
            attempt=self.attempt,
            uptime_s=self.uptime_s,
            restarts=self.restarts,
            planned_restarts=self.planned,
            now=now,
        )
        self.attempt = decision.attempt
        return decision


def test_only_the_first_planned_restart_in_the_window_is_free() -> None:
    child = Child(Policy(backoff_initial_s=1.0, flap_max=5, flap_window_s=300.0))
    delays = [child.exits(t, planned=True).delay_s for t in (0.0, 80.0, 160.0)]
    assert delays == [0.0, 1.0, 2.0]


def test_a_planned_restart_after_the_window_is_free_again() -> None:
    child = Child(Policy(flap_window_s=300.0))
    assert child.exits(0.0, planned=True).delay_s == 0.0
    assert child.exits(301.0, planned=True).delay_s == 0.0


def test_a_planned_restart_loop_ends_in_failed() -> None:
    """A child asking for a restart soon after every start reaches the flap limit."""
    child = Child(Policy(backoff_initial_s=1.0, flap_max=5, flap_window_s=300.0), uptime_s=40.0)
    now, actions = 0.0, []
    for _ in range(10):
        decision = child.exits(now, planned=True)
        actions.append(decision.action)
        if decision.action == "fail":
            break
        now += decision.delay_s + child.uptime_s
    assert actions == ["restart"] * 5 + ["fail"]


def test_planned_and_crash_restarts_share_the_flap_limit() -> None:
    child = Child(Policy(flap_max=3, flap_window_s=300.0))
    assert child.exits(0.0, planned=True).action == "restart"
    assert child.exits(10.0, planned=False).action == "restart"
    assert child.exits(20.0, planned=True).action == "restart"
    assert child.exits(30.0, planned=False).action == "fail"


def test_a_long_healthy_run_resets_the_backoff() -> None:
    child = Child(Policy(backoff_initial_s=1.0, backoff_reset_s=600.0), uptime_s=10.0)
    child.exits(0.0, planned=False)
    assert child.exits(20.0, planned=False).delay_s == 2.0
    child.uptime_s = 700.0
    assert child.exits(800.0, planned=False).delay_s == 1.0


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_is_live_with_ipv6_urls(caplog: pytest.LogCaptureFixture) -> None:
    server = _V6Server(("::1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert is_live(f"http://[::1]:{port}/health/live", timeout=5) is True
        unbracketed = f"http://::1:{port}/health/live"
        with caplog.at_level(logging.ERROR, logger="monitoring.supervisor"):
            assert is_live(unbracketed, timeout=5) is False
            assert is_live(unbracketed, timeout=5) is False
    finally:
        server.shutdown()
        server.server_close()
    assert len([r for r in caplog.records if "::1" in r.getMessage()]) == 1


def test_next_run_in_host_local_time_across_a_dst_change() -> None:
    """The default (no ``tz``) is the host's zone: run under TZ=Europe/Berlin."""
    code = (
        "import datetime as dt; from monitoring.restart import next_run; "
        "now = dt.datetime(2026, 3, 28, 4, 0).astimezone(); "
        "print(next_run(now, '04:00').astimezone(dt.UTC).isoformat())"
    )
    env = {**os.environ, "TZ": "Europe/Berlin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "2026-03-29T02:00:00+00:00"
